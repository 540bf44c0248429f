"""``taskcast serve``: run one bridge until SIGTERM or SIGINT.

Command-line flags go through the same parsers as the environment, so a bad
``--port`` and a bad ``TASKCAST_PORT`` get the same one-line error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click

from taskcast.bridge.access import check_exposure
from taskcast.bridge.server import Bridge
from taskcast.bridge.supervisor import EXIT_CONFIG, Supervisor, child_argv, child_env
from taskcast.embedded_redis import free_port
from taskcast.worker_config.settings import VARIABLES, Settings, load_settings

log = logging.getLogger("taskcast.bridge")


def settings_from(flags: dict[str, str | None]) -> Settings:
    """Settings from the environment, with the given flags taking precedence.

    Flags go through the same parsing as the variables they stand for, so a bad
    ``--port`` is reported as TASKCAST_PORT, the name the docs use.
    """
    environ = dict(os.environ)
    environ.update({VARIABLES[name]: value for name, value in flags.items() if value is not None})
    return load_settings(environ)


async def run_until_signalled(settings: Settings, shared_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, then close every connection with 1001."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)  # before start-up, which may wait on Redis
    bridge = Bridge(settings, reuse_port=shared_port)
    await bridge.start()
    ingester = None
    if settings.celery_events:
        from taskcast.bridge.ingest import CeleryEventIngester

        ingester = CeleryEventIngester(settings).start()
    await stop.wait()
    log.info("shutting down: closing %d connection(s)", len(bridge.hub.connections))
    if ingester is not None:
        await asyncio.to_thread(ingester.stop)
    await bridge.stop()


def supervise(settings: Settings) -> int:
    """Run ``settings.processes`` bridges on one port (a free one if the port is 0)."""
    port = settings.port or free_port(settings.host)
    log.info(
        "taskcast bridge supervisor: %d processes on ws://%s:%d/ws",
        settings.processes,
        settings.host,
        port,
    )
    return Supervisor(settings.processes, child_argv(), child_env(settings, port)).run()


@click.command()
@click.option("--host", help="Interface to listen on [TASKCAST_HOST, default 127.0.0.1].")
@click.option("--port", help="Port to listen on; 0 picks a free one [TASKCAST_PORT, 8765].")
@click.option("--redis-url", help="Event store Redis [TASKCAST_REDIS_URL].")
@click.option("--prefix", help="Key prefix in Redis [TASKCAST_PREFIX, default taskcast:].")
@click.option(
    "--processes",
    help="Bridge processes sharing the port, restarted if one dies; 'auto' = one per core "
    "[TASKCAST_PROCESSES, default 1].",
)
@click.option("--shared-port", is_flag=True, hidden=True)  # a child of --processes
@click.option(
    "--celery-events",
    is_flag=True,
    default=None,
    help="Also store the lifecycle of tasks of apps that never import taskcast, from "
    "Celery's event stream (workers run with -E) [TASKCAST_CELERY_EVENTS].",
)
@click.option("--broker", help="Broker whose Celery events to ingest [CELERY_BROKER_URL].")
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="Listen on a non-loopback address without a token key: anyone who reaches it can "
    "read every operation [TASKCAST_INSECURE].",
)
def serve(
    host: str | None,
    port: str | None,
    redis_url: str | None,
    prefix: str | None,
    processes: str | None,
    shared_port: bool,
    celery_events: bool | None,
    broker: str | None,
    insecure: bool | None,
) -> None:
    """Stream operations from Redis to WebSocket clients (ws://HOST:PORT/ws)."""
    settings = settings_from(
        {
            "host": host,
            "port": port,
            "redis_url": redis_url,
            "prefix": prefix,
            "processes": processes,
            "celery_events": "true" if celery_events else None,
            "broker_url": broker,
            "insecure": "true" if insecure else None,
        }
    )
    check_exposure(settings)  # before anything is logged: one line, and exit 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per opened/closed connection would drown the log at 10k clients.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if settings.processes > 1 and not shared_port:
        sys.exit(supervise(settings))
    try:
        asyncio.run(run_until_signalled(settings, shared_port))
    except OSError as exc:
        click.echo(
            f"taskcast serve: cannot listen on {settings.host}:{settings.port} "
            f"(TASKCAST_HOST/TASKCAST_PORT): {exc.strerror or exc}",
            err=True,
        )
        sys.exit(EXIT_CONFIG)
