"""``taskcast demo`` as a newcomer runs it, on a machine with no Redis where it looks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
from bridge_helpers import WsClient
from helpers import wait_for

from taskcast.embedded_redis import free_port


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def start_demo(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKCAST_", "CELERY_"))}
    env["TASKCAST_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers there
    demo = subprocess.Popen(
        [sys.executable, "-m", "taskcast", "demo", "--no-browser", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def collect() -> None:
        assert demo.stdout is not None
        lines.extend(demo.stdout)

    threading.Thread(target=collect, daemon=True).start()
    return demo, lines


async def test_demo_runs_everything_and_leaves_nothing_behind() -> None:
    port = free_port()
    demo, lines = start_demo("--port", str(port), "--duration", "12", "--interval", "1")
    try:
        wait_for(lambda: any("dashboard at" in line for line in lines), timeout=40)
        assert any("started a private one" in line for line in lines)
        children = {p.pid: p for p in descendants(demo.pid)}
        names = " ".join(" ".join(p.cmdline()) for p in children.values())
        assert "redis-server" in names and "celery" in names and "taskcast serve" in names
        client = await WsClient.open(f"ws://127.0.0.1:{port}/ws")
        await client.request("subscribe_all")
        done = await client.wait_for(lambda f: f.get("event_type") == "completed", timeout=30)
        await client.close()
        children.update({p.pid: p for p in descendants(demo.pid)})  # pool children by now
        submitted = [m[1] for line in lines if (m := re.search(r"operation=([\w-]+)", line))]
        assert done["operation_id"] in submitted
        assert demo.wait(timeout=40) == 0
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=20)
    deadline = time.monotonic() + 5
    while (
        alive := [p for p in children.values() if p.is_running()]
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive == [], [p.cmdline() for p in alive]
    assert any("demo stopped" in line for line in lines)
    assert not any("shutdown (MainProcess)" in line for line in lines), lines[-5:]  # Celery's


def test_ctrl_c_stops_every_child() -> None:
    demo, lines = start_demo("--port", str(free_port()))
    wait_for(lambda: any("dashboard at" in line for line in lines), timeout=40)
    children = descendants(demo.pid)
    assert len(children) >= 3
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=20) == 0
    wait_for(lambda: not any(p.is_running() for p in children), timeout=5)
