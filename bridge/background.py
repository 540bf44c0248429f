"""Run a bridge on its own thread and event loop, inside another application's process.

For web apps that want progress streaming without a second service: call
:func:`start_background` at start-up and :func:`stop_background` at exit. One
background bridge per process; it shares nothing with the host's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

from taskcast.bridge.server import Bridge
from taskcast.worker_config.settings import Settings, load_settings

_lock = threading.Lock()
_runner: _Runner | None = None


class _Runner:
    def __init__(self, settings: Settings) -> None:
        self.bridge = Bridge(settings)
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="taskcast-bridge", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        try:
            await self.bridge.start()
        except BaseException as exc:  # handed to the caller of start_background
            self.error = exc
            self.started.set()
            return
        self.started.set()
        await self.stop_requested.wait()
        await self.bridge.stop()

    def request_stop(self) -> None:
        if self.loop is not None and self.stop_requested is not None:
            self.loop.call_soon_threadsafe(self.stop_requested.set)


def start_background(
    host: str | None = None,
    port: int | None = None,
    *,
    settings: Settings | None = None,
    timeout: float = 10.0,
    **overrides: Any,
) -> Bridge:
    """Start the bridge and return it once it accepts connections (``.port``, ``.url``).

    ``settings`` defaults to :func:`load_settings` (the environment); ``host``,
    ``port`` and any other :class:`Settings` field given here override it.
    Raises RuntimeError if one is already running, or the start-up error
    (e.g. OSError when the port is taken).
    """
    global _runner
    with _lock:
        if _runner is not None and _runner.thread.is_alive():
            raise RuntimeError("a background bridge is already running")
        base = settings or load_settings()
        changes = {"host": host, "port": port, **overrides}
        resolved = dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})
        runner = _Runner(resolved)
        runner.thread.start()
        if not runner.started.wait(timeout):
            runner.request_stop()
            raise RuntimeError(f"the bridge did not start within {timeout} s")
        if runner.error is not None:
            runner.thread.join(timeout)
            raise runner.error
        _runner = runner
        return runner.bridge


def stop_background(timeout: float = 10.0) -> None:
    """Close every connection (1001) and stop the bridge thread; no-op if none runs."""
    global _runner
    with _lock:
        runner, _runner = _runner, None
    if runner is not None:
        runner.request_stop()
        runner.thread.join(timeout)


def is_running() -> bool:
    """Whether a background bridge started by :func:`start_background` is serving."""
    runner = _runner
    return runner is not None and runner.thread.is_alive()
