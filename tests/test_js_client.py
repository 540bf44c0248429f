"""The JS client, bridge/static/taskcast.js, run by Node.

Its pure logic (backoff, close codes, seq ledger, resume, token claims) needs
no server. Its reconnect-and-resume behaviour is tested against a real bridge
and Redis: the Node test calls this file's control server to store events, to
kill, stop and restart the bridge, and to stop and start the bridge's own Redis
(tests/js/taskcast_client.test.mjs lists the endpoints). Its token handling
(PROTOCOL.md "Access control") is tested against a bridge that requires
tokens, which the control server mints (tests/js/taskcast_auth.test.mjs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from bridge_helpers import RestartableBridge
from helpers import AUTH_SECRET, ROOT_DIR, TESTS_DIR, worker_env
from system_packages import require_binary

from taskcast import mint_token
from taskcast.embedded_redis import EmbeddedRedis
from taskcast.events import Event, log_data
from taskcast.store import EventStore
from taskcast.worker_config.settings import Settings

JS_TESTS = TESTS_DIR / "js"


def run_node_tests(test_file: Path, env: dict[str, str] | None = None) -> None:
    """Run one ``node --test`` file; fail unless it passed tests and skipped none."""
    node = require_binary("node", "nodejs")  # 20 or later
    proc = subprocess.run(
        [node, "--experimental-websocket", "--test", str(test_file)],
        cwd=ROOT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    counts = {name: int(n) for name, n in re.findall(r"^# (\w+) (\d+)$", proc.stdout, re.M)}
    assert counts["pass"] > 0, report
    assert counts["fail"] == counts["skipped"] == counts["cancelled"] == 0, report


def test_js_client_logic() -> None:
    run_node_tests(JS_TESTS / "taskcast_logic.test.mjs")


def test_js_eta_text() -> None:
    """The words the dashboard shows for an ``eta``, the same as ``taskcast watch``'s."""
    run_node_tests(JS_TESTS / "taskcast_eta.test.mjs")


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, so the Node test can take it down (an outage)
    without disturbing the session's server other tests use."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def private_store(private_redis: EmbeddedRedis, prefix: str) -> Iterator[EventStore]:
    client = redis.Redis.from_url(private_redis.url)
    yield EventStore(client, prefix=prefix)
    client.close()


@pytest.fixture
def private_bridge(
    task_settings: Settings, prefix: str, private_redis: EmbeddedRedis
) -> Iterator[RestartableBridge]:
    """``taskcast serve`` whose event store is :func:`private_redis`."""
    settings = replace(task_settings, prefix=prefix, redis_url=private_redis.url)
    bridge = RestartableBridge(worker_env(settings))
    bridge.start()
    yield bridge
    bridge.stop(signal.SIGKILL)




def token_for_node(
    ops: list[str] | str, scopes: list[str] | None = None, ttl: float = 60, kind: str = "valid"
) -> dict[str, str]:
    """A token for the Node test: ``valid``, ``forged`` (another key) or ``expired``."""
    if kind == "expired":
        claims = {"exp": int(time.time()) - 5, "ops": [ops] if isinstance(ops, str) else ops}
        return {"token": jwt.encode(claims, AUTH_SECRET, "HS256")}
    secret = AUTH_SECRET if kind == "valid" else "another-key-" + "k" * 32
    return {"token": mint_token(ops, scopes=scopes or ["read"], ttl=ttl, secret=secret)}


class ControlServer(ThreadingHTTPServer):
    """The Node test's handle on the world: store events, stop/kill/start the bridge and Redis,
    mint tokens."""

    def __init__(
        self, store: EventStore, bridge: RestartableBridge, server: EmbeddedRedis | None = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), ControlHandler)
        self.routes: dict[str, Callable[..., Any]] = {
            "/emit": lambda operation_id, count, terminal=False: {
                "seqs": self.emit(store, operation_id, count, terminal)
            },
            "/bridge/stop": lambda: bridge.stop(signal.SIGTERM),
            "/bridge/kill": lambda: bridge.stop(signal.SIGKILL),
            "/bridge/start": bridge.start,
            "/token": token_for_node,
        }
        if server is not None:
            self.routes["/redis/stop"] = lambda: self.stop_redis(store, server)
            self.routes["/redis/start"] = lambda: {"port": server.start().port}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @staticmethod
    def emit(store: EventStore, operation_id: str, count: int, terminal: bool) -> list[int]:
        """``count`` log events (never coalesced, so each gets a seq), then ``completed``."""
        events = [
            Event("log", operation_id, log_data("info", f"line {n}"), operation_type="js.test")
            for n in range(1, count + 1)
        ]
        if terminal:
            events.append(Event("completed", operation_id, {"status": "completed", "duration": 0}))
        return [store.append(event) for event in events]

    @staticmethod
    def stop_redis(store: EventStore, server: EmbeddedRedis) -> None:
        """Snapshot to disk, then stop: like a production Redis with persistence, it comes
        back with its data (operations keep counting seqs) on the same port."""
        store.client.save()
        server.stop()


class ControlHandler(BaseHTTPRequestHandler):
    server: ControlServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        try:
            status, reply = 200, self.server.routes[self.path](**body) or {}
        except Exception as exc:  # reported to the Node test, which fails with it
            status, reply = 500, {"error": repr(exc)}
        payload = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the Node test reports what went wrong."""


def run_against(control: ControlServer, bridge: RestartableBridge, test_file: Path) -> None:
    """Run a Node test file with ``control`` serving it and ``bridge``'s URL in its environment."""
    threading.Thread(target=control.serve_forever, daemon=True).start()
    try:
        env = dict(
            os.environ,
            TASKCAST_WS_URL=f"ws://127.0.0.1:{bridge.port}/ws",
            TASKCAST_CONTROL_URL=control.url,
        )
        run_node_tests(test_file, env)
    finally:
        control.shutdown()
        control.server_close()


def test_js_client_reconnects_and_resumes_against_real_bridge(
    private_bridge: RestartableBridge, private_store: EventStore, private_redis: EmbeddedRedis
) -> None:
    control = ControlServer(private_store, private_bridge, private_redis)
    run_against(control, private_bridge, JS_TESTS / "taskcast_client.test.mjs")


def test_js_client_tokens_against_a_bridge_that_requires_them(
    secured_bridge: RestartableBridge, store: EventStore
) -> None:
    run_against(
        ControlServer(store, secured_bridge), secured_bridge, JS_TESTS / "taskcast_auth.test.mjs"
    )
