"""Debian's HAProxy in front of two bridges: one is killed, every client resumes on the other."""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from bridge_helpers import RestartableBridge, follow_seqs, http_get, produce_numbered
from helpers import ROOT_DIR, wait_for, worker_env
from system_packages import require_binary

from taskcast.embedded_redis import free_port

OPERATIONS = 5
CLIENTS = 100
EVENTS = 120

CONFIG = """
global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    retries 3
    option redispatch
frontend taskcast
    bind 127.0.0.1:{port}
    default_backend bridges
backend bridges
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 300ms fall 2 rise 1
    server bridge1 127.0.0.1:{first} check
    server bridge2 127.0.0.1:{second} check
"""


@pytest.fixture
def balanced(task_settings, prefix: str, tmp_path: Path) -> Iterator[tuple[int, list]]:
    """Two ``taskcast serve`` processes behind ``haproxy``; yields its port and the bridges."""
    haproxy = require_binary("haproxy", "haproxy")
    env = worker_env(replace(task_settings, prefix=prefix))
    bridges = [RestartableBridge(env), RestartableBridge(env)]
    for bridge in bridges:
        bridge.start()
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(port=port, first=bridges[0].port, second=bridges[1].port))
    balancer = subprocess.Popen(
        [haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout=15)
        yield port, bridges
    finally:
        balancer.terminate()
        balancer.wait(10)
        for bridge in bridges:
            bridge.stop(signal.SIGKILL)


def answers(url: str) -> bool:
    try:
        return http_get(url)[0] == 200
    except OSError:
        return False


def connected(bridge: RestartableBridge) -> int:
    _, _, body = http_get(f"http://127.0.0.1:{bridge.port}/api/stats")
    return orjson.loads(body)["stats"]["connected_clients"]


async def test_clients_behind_haproxy_resume_on_the_other_bridge_when_one_dies(
    balanced, store
) -> None:
    port, bridges = balanced
    operations = [f"lb-{n}" for n in range(OPERATIONS)]
    go = threading.Event()
    producer = threading.Thread(target=produce_numbered, args=(store, operations, go, EVENTS, 0.03))
    producer.start()
    try:
        ready = [asyncio.Event() for _ in range(CLIENTS)]
        url = f"ws://127.0.0.1:{port}/ws"
        followers = [
            asyncio.create_task(follow_seqs(url, operations[n % OPERATIONS], event))
            for n, event in enumerate(ready)
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), 60)
        counts = await asyncio.to_thread(lambda: [connected(bridge) for bridge in bridges])
        assert min(counts) > 0 and sum(counts) == CLIENTS, counts
        go.set()
        while store.snapshot(operations[0])["last_seq"] < EVENTS // 3:
            await asyncio.sleep(0.05)
        bridges[0].stop(signal.SIGKILL)
        received = await asyncio.wait_for(asyncio.gather(*followers), 90)
    finally:
        go.set()
        producer.join()
    # Those on the killed bridge (some, by the counts above) could only resume on the other.
    expected = list(range(1, EVENTS + 3))
    assert all(seqs == expected for seqs in received)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_the_example_config_starts_under_an_ordinary_open_file_limit(tmp_path: Path) -> None:
    """examples/haproxy/haproxy.cfg (the compose file's balancer) with the usual 1024
    descriptors: it must listen, not refuse to start for its own maxconn."""
    haproxy = require_binary("haproxy", "haproxy")
    port = free_port()
    example = (ROOT_DIR / "examples" / "haproxy" / "haproxy.cfg").read_text()
    assert "bind :8765" in example
    config = tmp_path / "haproxy.cfg"
    config.write_text(example.replace("bind :8765", f"bind 127.0.0.1:{port}"))

    def ordinary_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    balancer = subprocess.Popen(
        [haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, preexec_fn=ordinary_limit,
    )
    try:
        wait_for(lambda: accepts(port) or balancer.poll() is not None, timeout=15)
        assert balancer.poll() is None, balancer.communicate()[1]
    finally:
        balancer.terminate()
        balancer.wait(10)
