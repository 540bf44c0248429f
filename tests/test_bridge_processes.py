"""``taskcast serve --processes N``: one port, N processes, supervised, totals across them."""

from __future__ import annotations

import signal
import time

import psutil
from bridge_helpers import BridgeProcess, WsClient, eventually
from helpers import wait_for

from taskcast.embedded_redis import free_port


def listening_lines(process: BridgeProcess) -> list[str]:
    return [line for line in process.lines if "taskcast bridge listening on" in line]


def start(redis_url: str, prefix: str, count: int) -> tuple[BridgeProcess, int]:
    port = free_port()
    args = ("--port", str(port), "--redis-url", redis_url, "--prefix", prefix)
    process = BridgeProcess(*args, "--processes", str(count))
    wait_for(lambda: len(listening_lines(process)) >= count, timeout=30)
    return process, port


async def test_two_processes_share_one_port_and_report_totals(redis_url: str, prefix: str) -> None:
    supervisor, port = start(redis_url, prefix, 2)
    clients: list[WsClient] = []
    try:
        for _ in range(24):
            clients.append(await WsClient.open(f"ws://127.0.0.1:{port}/ws"))
        replies = [(await client.request("get_stats"))["stats"] for client in clients]
        answered = {stats["process"] for stats in replies}
        assert len(answered) == 2, "the kernel spread 24 connections over both processes"

        async def totals() -> dict:
            stats = (await clients[0].request("get_stats"))["stats"]
            bridges = stats["bridges"]
            return bridges if bridges["connected_clients"] == 24 else {}

        bridges = await eventually(totals, timeout=10)
        assert bridges["processes"] == 2
    finally:
        for client in clients:
            await client.close()
        code = supervisor.stop(signal.SIGTERM, timeout=10)
    assert code == 0


def test_a_dead_process_is_restarted_and_sigterm_stops_all_within_5s(
    redis_url: str, prefix: str
) -> None:
    supervisor, _ = start(redis_url, prefix, 2)
    try:
        first = psutil.Process(supervisor.process.pid).children()
        assert len(first) == 2
        first[0].kill()
        restarted = wait_for(
            lambda: {p.pid for p in psutil.Process(supervisor.process.pid).children()}
            - {p.pid for p in first},
            timeout=15,
        )
        wait_for(lambda: len(listening_lines(supervisor)) >= 3, timeout=30)
        children = psutil.Process(supervisor.process.pid).children()
        assert len(children) == 2 and restarted <= {p.pid for p in children}
        stopped_at = time.monotonic()
        code = supervisor.stop(signal.SIGTERM, timeout=10)
        assert code == 0 and time.monotonic() - stopped_at < 5
        assert not any(child.is_running() and child.status() != "zombie" for child in children)
    finally:
        supervisor.kill()


def test_a_bad_process_count_is_one_line_naming_the_setting() -> None:
    process = BridgeProcess("--processes", "0")
    assert process.process.wait(15) == 2
    process.stop()
    assert any("TASKCAST_PROCESSES" in line for line in process.lines), process.lines
