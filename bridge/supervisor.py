"""``taskcast serve --processes N``: N bridge processes sharing one port, kept running.

One bridge is one Python process, so one core. The supervisor starts N
``taskcast serve`` children that all listen on the same port with
``SO_REUSEPORT`` (the kernel spreads new connections across them), restarts
one that dies (its clients reconnect to the others and resume), and on
SIGTERM or SIGINT stops them all within :data:`STOP_SECONDS`. A child that
exits with the configuration error status stops the whole group: restarting
it would fail the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import replace

from taskcast.exits import ExitCode
from taskcast.worker_config.settings import Settings, to_environment

log = logging.getLogger("taskcast.bridge")

STOP_SECONDS = 5.0
EXIT_CONFIG = ExitCode.USAGE  # a child with a bad setting stops the group: restarts cannot help
# A child that keeps dying soon after it started is restarted ever later (doubling up
# to the second figure); one that ran for STABLE_SECONDS starts from the first again.
RESTART_BACKOFF = (0.1, 5.0)
STABLE_SECONDS = 10.0


class Supervisor:
    """Children running ``argv`` with ``env``; :meth:`run` blocks until stopped."""

    def __init__(self, count: int, argv: list[str], env: Mapping[str, str]) -> None:
        self.count = count
        self.argv = argv
        self.env = dict(env)
        self.children: list[subprocess.Popen[bytes] | None] = [None] * count
        self.restarts = 0
        self._stop = threading.Event()

    def stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        """Start, supervise, stop; the exit status (0, or 2 for a configuration error)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        delays = [RESTART_BACKOFF[0]] * self.count
        due = [0.0] * self.count
        started = [0.0] * self.count
        status = 0
        while not self._stop.is_set():
            now = time.monotonic()
            for index, child in enumerate(self.children):
                code = None if child is None else child.poll()
                if code == EXIT_CONFIG:
                    status = EXIT_CONFIG
                    self._stop.set()
                    break
                if child is not None and code is None:
                    continue
                if child is not None:
                    log.warning("bridge process %d exited with %s; restarting it", child.pid, code)
                    self.restarts += 1
                    if now - started[index] > STABLE_SECONDS:
                        delays[index] = RESTART_BACKOFF[0]
                    due[index] = now + delays[index]
                    delays[index] = min(delays[index] * 2, RESTART_BACKOFF[1])
                    self.children[index] = None
                if now >= due[index]:
                    self.children[index] = self._start()
                    started[index] = now
            self._stop.wait(0.1)
        self._stop_children()
        return status

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL)

    def _stop_children(self) -> None:
        running = [child for child in self.children if child is not None and child.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for child in running:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def child_argv() -> list[str]:
    """How a child runs: this interpreter, ``taskcast serve`` as one process on a shared port."""
    return [sys.executable, "-m", "taskcast", "serve", "--shared-port"]


def child_env(settings: Settings, port: int) -> dict[str, str]:
    """The environment of a child: the supervisor's settings (flags included), its port."""
    return dict(os.environ, **to_environment(replace(settings, port=port, processes=1)))
