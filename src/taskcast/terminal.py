"""Terminal commands: ``taskcast submit``, ``watch``, ``monitor`` and ``stats``.

They talk to a running bridge with :mod:`taskcast.client`; a bridge that is not
there is reported in one line with exit code 3, never a traceback. ``watch``
exits 0 when the operation completes and 1 when it ends in error, so shell
scripts can chain on it.
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
from celery import Celery
from kombu.exceptions import OperationalError
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

from taskcast.client import BridgeUnavailable, CommandError, TaskcastClient
from taskcast.events import REOPENING_STATUSES
from taskcast.protocol import FORBIDDEN, NOT_FOUND, UNAUTHORIZED
from taskcast.tasks import instrument
from taskcast.worker_config import celery_config, load_settings

EXIT_UNREACHABLE = 3
EXIT_UNKNOWN = 4  # no such operation, or no worker has the task
EXIT_USAGE = 2
EXIT_ACCESS = 5  # the bridge refused the token (or wants one)
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


url_option = click.option(
    "--url",
    default=None,
    help="Bridge WebSocket URL [default: ws://TASKCAST_HOST:TASKCAST_PORT/ws]",
)


def submitting_app(name: str = "taskcast_submit") -> Celery:
    """An instrumented Celery app on the broker of the environment's settings.

    It only sends tasks by name (the workers have them registered), and being
    instrumented it records each one's ``queued`` as any user's publisher does.
    """
    app = Celery(name)
    app.conf.update(celery_config(load_settings()))
    return instrument(app)


token_option = click.option(
    "--token",
    envvar="TASKCAST_TOKEN",
    default=None,
    help="Token for a bridge that requires one [TASKCAST_TOKEN]",
)


def run_client(
    url: str | None, token: str | None, work: Callable[[TaskcastClient], Awaitable[int]]
) -> None:
    """Connect, run ``work``, exit with its code; unreachable bridges exit 3 in one line."""
    url = url or default_url()
    if not url.startswith(("ws://", "wss://")):
        click.echo(
            f"taskcast: --url must be the bridge's WebSocket URL (ws://HOST:PORT/ws), not {url}",
            err=True,
        )
        sys.exit(EXIT_USAGE)

    async def main() -> int:
        async with TaskcastClient(url, token=token) as client:
            return await work(client)

    try:
        code = asyncio.run(main())
    except BridgeUnavailable as exc:
        click.echo(f"taskcast: {exc}", err=True)
        code = EXIT_UNREACHABLE
    except CommandError as exc:
        if exc.code in (UNAUTHORIZED, FORBIDDEN):
            hint = "pass a token with the read scope for it: --token or TASKCAST_TOKEN"
            click.echo(f"taskcast: the bridge refused: {exc}; {hint}", err=True)
            code = EXIT_ACCESS
        else:
            click.echo(f"taskcast: {exc}", err=True)
            code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


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
    start again, clears it.
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
    if kind in ("status", "progress") and data.get("message"):
        row["message"] = data["message"]
    row["updated_at"] = event.get("timestamp", time.time())
    return row


async def is_known(client: TaskcastClient, operation_id: str, wait: float) -> bool:
    """Whether the store has the operation, asking again for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            await client.get_operation(operation_id)
            return True
        except CommandError as exc:
            if exc.code != NOT_FOUND:
                raise
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.25)


async def follow(
    client: TaskcastClient, operation_id: str, console: Console, wait: float = 10.0
) -> int:
    """Show one operation's progress bar and log lines until it ends; its exit code.

    An id the store has not seen within ``wait`` seconds ends with one line
    and exit code 4 instead of waiting forever for events that never come.
    """
    if not await is_known(client, operation_id, wait):
        click.echo(
            f"taskcast: no operation {operation_id} in the event store after {wait:g}s; "
            "check the id, and that workers and the bridge share TASKCAST_REDIS_URL and "
            "TASKCAST_PREFIX",
            err=True,
        )
        return EXIT_UNKNOWN
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
            event = await watched.events.get()
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
        return 0 if ok else 1
    data = ending["data"]
    if ending["event_type"] == "completed":
        console.print(f"[green]completed[/] in {data.get('duration', 0):.2f}s")
        return 0
    failure = escape(f"{data.get('error_type')}: {data['error']}")
    console.print(f"[red]{data.get('status', 'failed')}[/]: {failure}")
    return 1


class Watched:
    """The bars of ``watch``: the operation's, then one line per member of a group or chord,
    each followed by a watch of its own whose events meet in one queue."""

    def __init__(self, client: TaskcastClient, bar: Progress) -> None:
        self.client = client
        self.bar = bar
        self.bars: dict[str, TaskID] = {}
        self.prefixes: dict[str, str] = {}
        # None once the followed operation's watch ended (its members' are not told).
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._watches: list[asyncio.Task[None]] = []

    def add(self, operation_id: str, prefix: str) -> None:
        if operation_id in self.bars:
            return
        self.bars[operation_id] = self.bar.add_task(prefix, total=1.0, status="waiting", eta="")
        self.prefixes[operation_id] = prefix
        self._watches.append(asyncio.create_task(self._forward(operation_id)))

    async def _forward(self, operation_id: str) -> None:
        async for event in self.client.watch(operation_id):
            await self.events.put(event)
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
        if row.get("message"):
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
            if event is not None:
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
def watch(operation_id: str, url: str | None, token: str | None, wait: float) -> None:
    """Follow one operation live; exit 0 when it completes, 1 when it fails, 4 if unknown."""
    run_client(url, token, lambda client: follow(client, operation_id, Console(), wait))


def workers_with(app: Celery, task_name: str, timeout: float) -> tuple[int, int]:
    """``(workers that answered, workers that have task_name registered)`` within ``timeout``."""
    replies = app.control.inspect(timeout=timeout).registered() or {}
    having = [worker for worker, names in replies.items() if task_name in names]
    return len(replies), len(having)


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
    url: str | None,
    token: str | None,
) -> None:
    """Submit a Celery task by name and print its id (the operation id).

    It first asks the running workers (for about a second) whether one has
    the task, because a task no worker knows would wait in the queue forever.
    """
    kwargs = dict(parse_arg(a) for a in args)
    app = submitting_app()
    try:
        if not no_check:
            answered, having = workers_with(app, task_name, timeout=1.0)
            if not having:
                click.echo(
                    f"taskcast: none of the {answered} running worker(s) on "
                    f"{app.conf.broker_url} has the task {task_name!r} registered; start a "
                    "worker that imports it (or pass --no-check to queue it anyway)",
                    err=True,
                )
                sys.exit(EXIT_UNKNOWN)
        result = app.send_task(task_name, kwargs=kwargs, queue=queue)
    except OperationalError as exc:
        click.echo(f"taskcast: cannot reach the Celery broker: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    click.echo(result.id)
    if watch_it:
        run_client(url, token, lambda client: follow(client, result.id, Console(stderr=True)))


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


async def _monitor(client: TaskcastClient, console: Console, duration: float | None) -> int:
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
    return 0


@click.command()
@url_option
@token_option
@click.option("--duration", type=float, default=None, help="Stop after this many seconds")
def monitor(url: str | None, token: str | None, duration: float | None) -> None:
    """Show every operation live (a table on a terminal, one line per event otherwise)."""
    run_client(url, token, lambda client: _monitor(client, Console(), duration))


@click.command()
@url_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON object")
def stats(url: str | None, token: str | None, as_json: bool) -> None:
    """Print the bridge's statistics."""

    async def show(client: TaskcastClient) -> int:
        values = await client.get_stats()
        if as_json:
            click.echo(orjson.dumps(values, option=orjson.OPT_INDENT_2).decode())
            return 0
        table = Table("statistic", "value", title="taskcast bridge")
        for key, value in values.items():
            table.add_row(key, str(value))
        Console().print(table)
        return 0

    run_client(url, token, show)


COMMANDS = (submit, watch, monitor, stats)
