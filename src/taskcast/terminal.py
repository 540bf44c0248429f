"""Terminal commands: ``taskcast submit``, ``watch``, ``monitor`` and ``stats``.

They talk to a running bridge with :mod:`taskcast.client`. Whatever stops a
command is raised as a :class:`~taskcast.exits.Failure` (its exit code from the
one table in :mod:`taskcast.exits`, and a line saying what to do), printed by
the ``taskcast`` group: never a traceback. ``watch`` exits 0 when the operation
completes and 1 when it ends in error, so shell scripts can chain on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import click
import orjson
import redis
from celery import Celery
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from websockets.exceptions import ConnectionClosed

from taskcast.client import (
    EXPIRY_SLACK,
    BridgeUnavailable,
    CommandError,
    TaskcastClient,
    token_expires_in,
)
from taskcast.events import REOPENING_STATUSES
from taskcast.exits import BY_ERROR_CODE, ExitCode, Failure
from taskcast.protocol import BAD_REQUEST, NOT_FOUND, UNAVAILABLE
from taskcast.redis_clients import store_client
from taskcast.tasks import instrument
from taskcast.worker_config import Settings, celery_config, load_settings

PASS_TOKEN = "--token or TASKCAST_TOKEN"
CHECK_ID = (
    "check the id, and that workers and the bridge share TASKCAST_REDIS_URL and TASKCAST_PREFIX"
)
CLOSE_POLICY = 1008  # PROTOCOL.md's close code for a refused origin or token
CHECK_TIMEOUT = 2.0  # seconds ``submit`` gives the event store and the broker to answer
LOG_STYLES = {"debug": "dim", "info": "cyan", "warning": "yellow", "error": "bold red"}
# (unit, seconds per unit, used below this many seconds), as etaText in bridge/static/taskcast.js
ETA_UNITS = (
    ("s", 1, 59.5),
    ("min", 60, 89.5 * 60),
    ("h", 3600, 47.5 * 3600),
    ("d", 86400, math.inf),
)


def default_url() -> str:
    """The bridge URL from TASKCAST_HOST / TASKCAST_PORT."""
    settings = load_settings()
    return f"ws://{settings.host}:{settings.port}/ws"


def bridge_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """``--url``, or the one the settings give; refused at once if it is not ws:// or wss://."""
    url = value or default_url()
    if not url.startswith(("ws://", "wss://")):
        raise click.BadParameter(
            f"must be the bridge's WebSocket URL (ws://HOST:PORT/ws), not {url}", ctx, param
        )
    return url


url_option = click.option(
    "--url",
    default=None,
    callback=bridge_url,
    help="Bridge WebSocket URL [default: ws://TASKCAST_HOST:TASKCAST_PORT/ws]",
)


def submitting_app(name: str = "taskcast_submit") -> Celery:
    """An instrumented Celery app on the broker of the environment's settings.

    It only sends tasks by name (the workers have them registered), and being
    instrumented it records each one's ``queued`` as any user's publisher does.
    It has no result backend: progress and results are followed through the
    bridge, and a Redis result backend would subscribe to every sent task's
    result, retrying for about 20 s when that Redis is down.
    """
    app = Celery(name)
    app.conf.update(celery_config(load_settings()), result_backend=None)
    return instrument(app)


token_option = click.option(
    "--token",
    envvar="TASKCAST_TOKEN",
    default=None,
    help="Token for a bridge that requires one [TASKCAST_TOKEN]",
)


def run_client(
    url: str, token: str | None, scope: str, work: Callable[[TaskcastClient], Awaitable[ExitCode]]
) -> None:
    """Connect, run ``work``, exit with its code.

    ``scope`` is the token scope the command needs, named in the line a refusal prints.
    """

    async def main() -> ExitCode:
        async with TaskcastClient(url, token=token) as client:
            return await work(client)

    try:
        code = asyncio.run(main())
    except (BridgeUnavailable, CommandError) as exc:
        raise client_failure(exc, token, scope) from None
    sys.exit(code)


def policy_refusal(exc: BridgeUnavailable) -> str | None:
    """The reason the bridge gave for closing the connection as it opened with 1008 (policy),
    else None. The command sends no ``Origin``, so that refusal is about its token."""
    cause = exc.__cause__
    closed = cause.rcvd if isinstance(cause, ConnectionClosed) else None
    return closed.reason if closed is not None and closed.code == CLOSE_POLICY else None


def client_failure(exc: BridgeUnavailable | CommandError, token: str | None, scope: str) -> Failure:
    """What to tell a user whose bridge is gone or refused a command, with the exit code.

    A token that has expired by now explains a lost connection better than the
    connection itself: the bridge closes an expired token's connection (4401),
    at the handshake or in the middle of a watch, and a new token is the fix.
    """
    if token is not None and token_expires_in(token) < EXPIRY_SLACK:
        return Failure(
            ExitCode.ACCESS,
            f"the token has expired; pass a fresh one (taskcast.mint_token): {PASS_TOKEN}",
        )
    if isinstance(exc, BridgeUnavailable):
        refusal = policy_refusal(exc)
        if refusal is not None:
            return Failure(
                ExitCode.ACCESS,
                f"the bridge refused the token ({refusal}); pass one signed with the bridge's "
                f"key (TASKCAST_AUTH_SECRET): {PASS_TOKEN}",
            )
        start = "start it (taskcast serve) or pass its URL with --url"
        return Failure(ExitCode.UNREACHABLE, f"{exc}; {start}")
    code = BY_ERROR_CODE.get(exc.code, ExitCode.FAILED)
    hints = {
        ExitCode.ACCESS: f"pass a token with the {scope} scope: {PASS_TOKEN}",
        ExitCode.UNREACHABLE: "the bridge cannot reach its event store: check that Redis "
        "is up at the bridge's TASKCAST_REDIS_URL",
        ExitCode.NOT_FOUND: CHECK_ID,
    }
    hint = hints.get(code)
    return Failure(code, f"the bridge refused: {exc}" + (f"; {hint}" if hint else ""))


def parse_arg(text: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it parses (numbers, lists...), else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="--arg")
    try:
        return key, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return key, raw


def eta_text(seconds: float | None) -> str:
    """``~40 s left``, ``~2 min left``, ``~3 h left``: an ``eta`` as a person reads it.

    Whole units, rounded half up (as the dashboard's ``etaText`` in taskcast.js
    does, so both show the same words); empty when there is no estimate.
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    unit, size = next((unit, size) for unit, size, upto in ETA_UNITS if seconds < upto)
    return f"~{max(1, math.floor(seconds / size + 0.5))} {unit} left"


def apply_event(row: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """Fold one event into a displayed operation row (status, progress, eta, message).

    ``eta`` is the latest progress event's; the end of the operation, or a
    start again, clears it. The message follows the store's rule: a status
    says what the operation does now, so one without a message clears the last
    (a task that ran and completed must not keep saying "Waiting for a worker").
    """
    data = event.get("data", {})
    kind = event["event_type"]
    row.setdefault("operation_id", event["operation_id"])
    if kind == "status":
        row["status"] = data.get("status")
        if row["status"] in REOPENING_STATUSES:
            row["eta"] = None
    elif kind == "completed":
        row["status"], row["progress"], row["eta"] = "completed", 1.0, None
    elif kind == "error":
        row["status"], row["message"] = data.get("status", "failed"), data.get("error", "")
        row["eta"] = None
    elif kind == "progress":
        row["eta"] = data.get("eta")
    if data.get("progress") is not None:
        row["progress"] = data["progress"]
    if kind == "status" or (kind == "progress" and data.get("message")):
        row["message"] = data.get("message") or ""
    row["updated_at"] = event.get("timestamp", time.time())
    return row


async def is_known(client: TaskcastClient, operation_id: str, wait: float) -> bool:
    """Whether the store has the operation, asking again for up to ``wait`` seconds.

    A bridge whose event store is down answers ``unavailable``: that is asked
    again too, since Redis restarts in seconds (once the watch has begun, the
    client resumes by itself), and raised when ``wait`` is over.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            await client.get_operation(operation_id)
            return True
        except CommandError as exc:
            if exc.code not in (NOT_FOUND, UNAVAILABLE):
                raise
            if time.monotonic() >= deadline:
                if exc.code == UNAVAILABLE:
                    raise
                return False
        await asyncio.sleep(0.25)


async def follow(
    client: TaskcastClient, operation_id: str, console: Console, wait: float = 10.0
) -> ExitCode:
    """Show one operation's progress bar and log lines until it ends; its exit code.

    An id the store has not seen within ``wait`` seconds is a failure (not
    found) instead of a wait forever for events that never come.
    """
    if not await is_known(client, operation_id, wait):
        raise Failure(
            ExitCode.NOT_FOUND,
            f"no operation {operation_id} in the event store after {wait:g}s; {CHECK_ID}",
        )
    columns = (
        TextColumn("[bold]{task.fields[status]:<10}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[eta]}"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    ending: dict[str, Any] | None = None
    with Progress(*columns, console=console, transient=False) as bar:
        watched = Watched(client, bar)
        watched.add(operation_id, "")
        snapshot = await client.get_operation(operation_id)
        for child in snapshot.get("children") or []:
            watched.add(child, f"  {child[:8]} ")
        while ending is None:
            event = await watched.next()
            if event is None:
                break  # the watch ended without a terminal event: see the snapshot below
            if event["operation_id"] == operation_id and event["event_type"] == "log":
                data = event["data"]
                level = data.get("level", "info")
                line = Text(f"{level:>7} ", style=LOG_STYLES.get(level, ""))
                bar.console.print(line.append(data["message"], style="default"))
            watched.show(event)
            if event["operation_id"] != operation_id:
                continue
            if event["event_type"] in ("completed", "error"):
                ending = event
            total = (event["data"].get("details") or {}).get("total")
            if isinstance(total, int) and total > len(watched.bars) - 1:
                for child in (await client.get_operation(operation_id)).get("children") or []:
                    watched.add(child, f"  {child[:8]} ")
        await watched.finish()
    if ending is None:
        snapshot = client.snapshot(operation_id) or await client.get_operation(operation_id)
        ok = snapshot.get("status") == "completed"
        console.print(f"operation {operation_id} ended: {snapshot.get('status')}")
        return ExitCode.OK if ok else ExitCode.FAILED
    data = ending["data"]
    if ending["event_type"] == "completed":
        console.print(f"[green]completed[/] in {data.get('duration', 0):.2f}s")
        return ExitCode.OK
    failure = escape(f"{data.get('error_type')}: {data['error']}")
    console.print(f"[red]{data.get('status', 'failed')}[/]: {failure}")
    return ExitCode.FAILED


class Watched:
    """The bars of ``watch``: the operation's, then one line per member of a group or chord,
    each followed by a watch of its own whose events meet in one queue."""

    def __init__(self, client: TaskcastClient, bar: Progress) -> None:
        self.client = client
        self.bar = bar
        self.bars: dict[str, TaskID] = {}
        self.prefixes: dict[str, str] = {}
        # None once the followed operation's watch ended (its members' are not told), the
        # error once the bridge went away for good.
        self.events: asyncio.Queue[dict[str, Any] | BridgeUnavailable | None] = asyncio.Queue()
        self._watches: list[asyncio.Task[None]] = []

    def add(self, operation_id: str, prefix: str) -> None:
        if operation_id in self.bars:
            return
        self.bars[operation_id] = self.bar.add_task(prefix, total=1.0, status="waiting", eta="")
        self.prefixes[operation_id] = prefix
        self._watches.append(asyncio.create_task(self._forward(operation_id)))

    async def next(self) -> dict[str, Any] | None:
        """The next event of a watched operation; None when the followed one's watch ended.

        Raises :class:`BridgeUnavailable` when a watch lost the bridge for good
        (gone, or the token expired): ``watch`` would otherwise wait forever.
        """
        item = await self.events.get()
        if isinstance(item, BridgeUnavailable):
            raise item
        return item

    async def _forward(self, operation_id: str) -> None:
        try:
            async for event in self.client.watch(operation_id):
                await self.events.put(event)
        except BridgeUnavailable as exc:
            await self.events.put(exc)
            return
        if not self.prefixes[operation_id]:
            await self.events.put(None)

    def show(self, event: dict[str, Any]) -> None:
        """Fold ``event`` into its operation's bar."""
        row = apply_event({}, event)
        update: dict[str, Any] = {}
        if "status" in row:
            update["status"] = row["status"]
        if "progress" in row:
            update["completed"] = row["progress"]
        if "eta" in row:
            update["eta"] = eta_text(row["eta"])
        if "message" in row:
            update["description"] = self.prefixes[event["operation_id"]] + row["message"]
        self.bar.update(self.bars[event["operation_id"]], **update)

    async def finish(self) -> None:
        """Stop following the members; show what they sent meanwhile, then each member's
        stored state: a group can end (one member failed) before a member's own watch
        delivered its last events, whose line would otherwise stay as it was."""
        for watch in self._watches:
            watch.cancel()
        while not self.events.empty():
            event = self.events.get_nowait()
            if isinstance(event, dict):
                self.show(event)
        for operation_id, prefix in self.prefixes.items():
            if not prefix:
                continue  # the followed operation itself: its terminal event was shown
            try:
                snapshot = await self.client.get_operation(operation_id)
            except CommandError:
                continue
            self.bar.update(
                self.bars[operation_id],
                status=snapshot["status"],
                completed=snapshot.get("progress") or 0.0,
                eta="",
                description=prefix + (snapshot.get("message") or ""),
            )


wait_option = click.option(
    "--wait",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds to wait for an operation the store does not know yet",
)


@click.command()
@click.argument("operation_id")
@url_option
@token_option
@wait_option
def watch(operation_id: str, url: str, token: str | None, wait: float) -> None:
    """Follow one operation live; exit 0 when it completes, 1 when it fails, 4 if unknown.

    A bridge whose event store is down is asked again for up to --wait seconds (exit 3 after).
    """
    run_client(url, token, "read", lambda client: follow(client, operation_id, Console(), wait))


def workers_with(app: Celery, task_name: str, timeout: float) -> tuple[int, int]:
    """``(workers that answered, workers that have task_name registered)`` within ``timeout``."""
    replies = app.control.inspect(timeout=timeout).registered() or {}
    having = [worker for worker, names in replies.items() if task_name in names]
    return len(replies), len(having)


def broker_failure(app: Celery, exc: Exception) -> Failure:
    url = maybe_sanitize_url(app.conf.broker_url)
    return Failure(
        ExitCode.UNREACHABLE,
        f"the Celery broker at {url} does not answer ({exc}); start it, or point "
        "CELERY_BROKER_URL at it",
    )


def check_reachable(app: Celery, settings: Settings) -> None:
    """Fail at once, in one line, when the event store or the broker does not answer.

    Left to themselves both wait: kombu retries a refused broker connection
    with growing pauses (6 s before the check for workers gives up), and a
    ``queued`` event the store does not take waits in the outbox, retried for
    TASKCAST_SHUTDOWN_TIMEOUT as the command exits. One attempt each tells the
    user what is down before anything is sent.
    """
    try:
        client = store_client(
            settings, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT
        )
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        raise Failure(
            ExitCode.UNREACHABLE,
            f"the event store at {maybe_sanitize_url(settings.redis_url)} does not answer "
            f"({exc}); start Redis there, or point TASKCAST_REDIS_URL at it",
        ) from None
    try:
        with app.connection_for_write(connect_timeout=CHECK_TIMEOUT) as connection:
            connection.ensure_connection(max_retries=0)
    except OperationalError as exc:
        raise broker_failure(app, exc) from None


@click.command()
@click.argument("task_name")
@click.option("--arg", "args", multiple=True, help="Task keyword argument key=value (repeatable)")
@click.option("--watch", "watch_it", is_flag=True, help="Follow the task after submitting it")
@click.option("--queue", default=None, help="Celery queue to send the task to")
@click.option(
    "--no-check",
    is_flag=True,
    help="Send even if no running worker has the task registered (it waits in the queue)",
)
@url_option
@token_option
def submit(
    task_name: str,
    args: tuple[str, ...],
    watch_it: bool,
    queue: str | None,
    no_check: bool,
    url: str,
    token: str | None,
) -> None:
    """Submit a Celery task by name and print its id (the operation id).

    It first asks the running workers (for about a second) whether one has
    the task, because a task no worker knows would wait in the queue forever.
    """
    kwargs = dict(parse_arg(a) for a in args)
    app = submitting_app()
    check_reachable(app, load_settings())
    try:
        if not no_check:
            answered, having = workers_with(app, task_name, timeout=1.0)
            if not having:
                raise Failure(
                    ExitCode.NOT_FOUND,
                    f"none of the {answered} running worker(s) on "
                    f"{maybe_sanitize_url(app.conf.broker_url)} has the task {task_name!r} "
                    "registered; start a worker that imports it (or pass --no-check to queue "
                    "it anyway)",
                )
        result = app.send_task(task_name, kwargs=kwargs, queue=queue)
    except OperationalError as exc:
        raise broker_failure(app, exc) from None
    click.echo(result.id)
    if watch_it:
        run_client(
            url, token, "read", lambda client: follow(client, result.id, Console(stderr=True))
        )


def _operations_table(rows: dict[str, dict[str, Any]]) -> Table:
    table = Table(expand=True)
    for name in ("operation", "type", "status", "progress", "message"):
        table.add_column(name, overflow="fold")
    ordered = sorted(rows.values(), key=lambda r: r.get("updated_at") or 0, reverse=True)
    for row in ordered[:40]:
        table.add_row(
            row["operation_id"][:12],
            row.get("operation_type") or "",
            row.get("status") or "",
            f"{(row.get('progress') or 0) * 100:5.1f}%",
            row.get("message") or "",
        )
    return table


async def _monitor(client: TaskcastClient, console: Console, duration: float | None) -> ExitCode:
    rows = {op["operation_id"]: op for op in await client.list_operations("active")}

    events = await client.monitor()
    if not console.is_terminal:
        console.print(f"monitoring every operation at {client.url}", highlight=False)

    async def consume(live: Live | None) -> None:
        async for event in events:
            row = apply_event(rows.setdefault(event["operation_id"], {}), event)
            if live is not None:
                live.update(_operations_table(rows))
            else:
                console.print(
                    f"{row['operation_id']} {event['event_type']:<9} {row.get('status') or '':<10} "
                    f"{(row.get('progress') or 0) * 100:5.1f}% {row.get('message') or ''}",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )

    async def run(live: Live | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consume(live), duration)

    if console.is_terminal:
        with Live(_operations_table(rows), console=console, refresh_per_second=8) as live:
            await run(live)
    else:
        await run(None)
    return ExitCode.OK


@click.command()
@url_option
@token_option
@click.option("--duration", type=float, default=None, help="Stop after this many seconds")
def monitor(url: str, token: str | None, duration: float | None) -> None:
    """Show every operation live (a table on a terminal, one line per event otherwise)."""
    run_client(url, token, "monitor", lambda client: _monitor(client, Console(), duration))


@click.command()
@url_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON object")
def stats(url: str, token: str | None, as_json: bool) -> None:
    """Print the bridge's statistics."""

    async def show(client: TaskcastClient) -> ExitCode:
        values = await client.get_stats()
        if as_json:
            click.echo(orjson.dumps(values, option=orjson.OPT_INDENT_2).decode())
            return ExitCode.OK
        table = Table("statistic", "value", title="taskcast bridge")
        for key, value in values.items():
            table.add_row(key, str(value))
        Console().print(table)
        return ExitCode.OK

    run_client(url, token, "monitor", show)


@click.command()
@click.argument("operation_id")
@url_option
@token_option
@click.option(
    "--terminate",
    is_flag=True,
    help="Kill a running task at once (prefork pool) instead of at its next progress call",
)
def cancel(operation_id: str, url: str, token: str | None, terminate: bool) -> None:
    """Cancel an operation: its task is revoked and the operation ends revoked.

    Exit 0 once the bridge is cancelling it, 1 if it had already ended, 4 if unknown.
    """

    async def send(client: TaskcastClient) -> ExitCode:
        try:
            reply = await client.cancel(operation_id, terminate)
        except CommandError as exc:
            if exc.code != BAD_REQUEST:
                raise
            # The bridge's one refusal of a known operation: "operation already ended (...)".
            raise Failure(ExitCode.FAILED, f"cannot cancel {operation_id}: {exc.message}") from None
        click.echo(f"{reply['status']} {operation_id}; follow it: taskcast watch {operation_id}")
        return ExitCode.OK

    run_client(url, token, "cancel", send)


COMMANDS = (submit, watch, monitor, stats, cancel)
