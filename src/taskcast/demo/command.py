"""``taskcast demo``: Redis, Celery workers, the bridge and sample tasks in one process tree.

It uses the Redis at TASKCAST_REDIS_URL when one answers there, else starts a
private ``redis-server``, so a fresh machine needs nothing but the package.
Every child runs in its own session so that stopping the demo (Ctrl-C,
SIGTERM or the end of ``--duration``) kills whole process groups, Celery's
pool children included, and leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import webbrowser
from dataclasses import dataclass, field

import click
import redis

from taskcast.embedded_redis import EmbeddedRedis, free_port
from taskcast.terminal import submitting_app
from taskcast.worker_config import load_settings

# (task name, keyword arguments): every event type, with a failure and a retry.
SAMPLES: tuple[tuple[str, dict], ...] = (
    ("demo.generate_code", {"lines": 120, "delay": 0.05}),
    ("demo.web_search", {"queries": 4, "delay": 0.4}),
    ("demo.orchestrate", {"steps": 5, "delay": 0.8}),
    ("demo.flaky", {"fail_at": 0.6, "delay": 0.3}),
    ("demo.retry_once", {"delay": 0.5}),
)


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at ``url`` within a moment."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass
class ProcessTree:
    """Child processes, each the leader of its own process group."""

    children: list[tuple[str, subprocess.Popen[bytes], int]] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        stop_signal: int = signal.SIGTERM,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a child; ``stop_signal`` goes to it alone when the tree stops.

        ``stdout``: ``subprocess.DEVNULL`` drops what the child prints there; its
        stderr (where logs and errors go) stays the demo's.
        """
        process = subprocess.Popen(
            argv, env=env, start_new_session=True, stdin=subprocess.DEVNULL, stdout=stdout
        )
        self.children.append((name, process, stop_signal))
        return process

    def check(self) -> None:
        """Raise if a child died: a demo with a dead worker or bridge would only confuse."""
        for name, process, _ in self.children:
            if process.poll() is not None:
                raise click.ClickException(f"the {name} exited with code {process.returncode}")

    def stop(self, grace: float = 4.0) -> None:
        """Ask every child to stop, then SIGKILL whatever is left in its group after ``grace``."""
        for _, process, stop_signal in self.children:
            if process.poll() is None:
                process.send_signal(stop_signal)
        deadline = time.monotonic() + grace
        for _, process, _ in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def wait_http(url: str, timeout: float, tree: ProcessTree, stopping: threading.Event) -> None:
    """Poll ``url`` until it answers 200, failing early if a child dies; return early on a stop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree.check()
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if stopping.wait(0.1):
                return
    raise click.ClickException(f"the bridge did not answer at {url} within {timeout:.0f}s")


@click.command()
@click.option("--port", type=int, default=None, help="Bridge port [default: TASKCAST_PORT]")
@click.option("--workers", type=click.IntRange(1, 16), default=1, help="Celery worker processes")
@click.option("--no-browser", is_flag=True, help="Do not open the dashboard in a browser")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds")
@click.option(
    "--interval",
    type=float,
    default=4.0,
    show_default=True,
    help="Seconds between sample task submissions",
)
def demo(
    port: int | None, workers: int, no_browser: bool, duration: float | None, interval: float
) -> None:
    """Run Redis, Celery workers, the bridge and sample tasks; Ctrl-C stops everything."""
    settings = load_settings()
    port = settings.port if port is None else (port or free_port())
    # Ctrl-C and SIGTERM only set a flag that the demo checks between steps: an interrupt
    # raised as an exception could land inside an import or a library's __set_name__,
    # come out as some other error and cut the cleanup short.
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    embedded: EmbeddedRedis | None = None
    tree = ProcessTree()
    try:
        redis_url = settings.redis_url
        if not redis_answers(redis_url):
            embedded = EmbeddedRedis().start()
            redis_url = embedded.url
            click.echo(f"no Redis at {settings.redis_url}: started a private one at {redis_url}")
        env = dict(os.environ, TASKCAST_REDIS_URL=redis_url, TASKCAST_PORT=str(port))
        if embedded is not None or "CELERY_BROKER_URL" not in os.environ:
            env.update(CELERY_BROKER_URL=redis_url, CELERY_RESULT_BACKEND=redis_url)
        os.environ.update(env)
        _run(tree, env, settings.host, port, workers, no_browser, duration, interval, stopping)
    finally:
        if stopping.is_set():
            click.echo("\nstopping the demo...")
        tree.stop()
        if embedded is not None:
            embedded.close()
    click.echo("demo stopped: no worker, bridge or Redis left running")


def _run(
    tree: ProcessTree,
    env: dict[str, str],
    host: str,
    port: int,
    workers: int,
    no_browser: bool,
    duration: float | None,
    interval: float,
    stopping: threading.Event,
) -> None:
    if stopping.is_set():
        return
    for number in range(1, workers + 1):
        tree.start(
            f"worker {number}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "taskcast.demo.worker",
                "--quiet",
                "worker",
                "--loglevel=CRITICAL",  # the dashboard shows task failures
                "--concurrency=4",
                "-n",
                f"demo{number}@%h",
            ],
            dict(env, PYTHONWARNINGS="ignore::UserWarning"),  # Celery's run-as-root warning
            stop_signal=signal.SIGQUIT,  # cold shutdown: do not wait for running tasks
            # Celery prints "worker: Cold shutdown (MainProcess)" there whatever the log
            # level; with --quiet nothing else (its log and errors go to stderr).
            stdout=subprocess.DEVNULL,
        )
    tree.start("bridge", [sys.executable, "-m", "taskcast", "serve", "--port", str(port)], env)
    wait_http(f"http://{host}:{port}/healthz", 20, tree, stopping)
    if stopping.is_set():
        return
    dashboard = f"http://{host}:{port}/"
    click.echo(f"taskcast demo running: dashboard at {dashboard}  (Ctrl-C to stop)")
    click.echo(f"follow a task in the terminal with: taskcast watch <operation id> --url ws://{host}:{port}/ws")
    if not no_browser:
        webbrowser.open(dashboard)
    app = submitting_app("taskcast_demo")  # reads the URLs set above

    def submit(name: str, kwargs: dict) -> None:
        result = app.send_task(name, kwargs=kwargs)
        click.echo(f"submitted {name}: {dashboard}?operation={result.id}")

    for name, kwargs in SAMPLES:
        if stopping.is_set():
            return
        submit(name, kwargs)
    started = next_submit = time.monotonic()
    while not stopping.wait(0.1):
        if duration is not None and time.monotonic() - started >= duration:
            return
        tree.check()
        if time.monotonic() >= next_submit:
            next_submit += interval
            submit(*random.choice(SAMPLES))
