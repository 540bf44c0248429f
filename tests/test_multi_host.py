"""Workers and bridges on other hosts (network namespaces): one store, identical streams, and a
worker host's link cut for 5 s loses nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from helpers import ROOT_DIR, TESTS_DIR, wait_for, worker_env
from netns_hosts import Hosts

from taskcast.embedded_redis import redis_server_binary
from taskcast.worker_config import Settings

LINES = 150
DELAY = 0.04


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    made = Hosts(["store", "w1", "w2"]).create()
    yield made
    made.destroy()


def log_has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def test_bridges_on_two_hosts_stream_the_same_and_a_cut_link_loses_nothing(
    hosts: Hosts, task_settings: Settings, prefix: str, tmp_path: Path
) -> None:
    store = hosts.address["store"]
    hosts.start(
        "store",
        [
            redis_server_binary(),
            "--bind",
            store,
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        {},
        tmp_path / "redis.log",
    )
    wait_for(lambda: log_has(tmp_path / "redis.log", "Ready to accept connections"), 15)
    settings = replace(
        task_settings,
        redis_url=f"redis://{store}:6379/0",
        broker_url=f"redis://{store}:6379/1",
        result_backend=f"redis://{store}:6379/2",
        prefix=prefix,
        insecure=True,
    )
    env = worker_env(settings)
    for name in ("w1", "w2"):
        worker_log = tmp_path / f"{name}.log"
        hosts.start(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker_tasks",
                "worker",
                "-P",
                "threads",
                "-c",
                "2",
                "-Q",
                f"{prefix}{name}",
                "-n",
                f"{name}@%h",
                "--without-mingle",
                "--without-gossip",
                "--loglevel=INFO",
            ],
            env,
            worker_log,
        )
        hosts.start(
            name,
            [
                sys.executable,
                "-m",
                "taskcast",
                "serve",
                "--host",
                hosts.address[name],
                "--port",
                "8765",
                "--insecure",
            ],
            env,
            tmp_path / f"bridge-{name}.log",
        )
    for name in ("w1", "w2"):
        wait_for(lambda n=name: log_has(tmp_path / f"{n}.log", " ready."), 40)
        wait_for(lambda n=name: log_has(tmp_path / f"bridge-{n}.log", "listening on"), 20)
    submit = (
        "import worker_tasks; print(worker_tasks.app.send_task('test.numbered', "
        f"kwargs={{'lines': {LINES}, 'delay': {DELAY}}}, queue='{prefix}w1').id)"
    )
    sent = subprocess.run(
        hosts.command("w1", [sys.executable, "-c", submit]),
        env=env,
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert sent.returncode == 0, sent.stderr
    operation_id = sent.stdout.strip()
    followers = {
        name: hosts.start(
            name,
            [
                sys.executable,
                str(TESTS_DIR / "netns_client.py"),
                f"ws://{hosts.address[name]}:8765/ws",
                operation_id,
            ],
            env,
            tmp_path / f"client-{name}.log",
        )
        for name in ("w1", "w2")
    }
    # The worker host (w1) loses its cable for 5 s mid-task: its outbox keeps the events.
    wait_for(lambda: log_has(tmp_path / "client-w2.log", '"message":"30"'), 30)
    hosts.cut("w1")
    time.sleep(5)  # the outage under test
    hosts.restore("w1")
    for follower in followers.values():
        follower.wait(90)
    streams = {
        name: [
            orjson.loads(line)
            for line in (tmp_path / f"client-{name}.log").read_text().splitlines()
        ]
        for name in followers
    }
    seen = {
        name: [(e["seq"], e["event_type"], e["data"].get("message")) for e in events]
        for name, events in streams.items()
    }
    assert seen["w1"] == seen["w2"], "the two bridges streamed different sequences"
    events = streams["w2"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    lines = [int(e["data"]["message"]) for e in events if e["event_type"] == "log"]
    assert lines == list(range(1, LINES + 1)) and events[-1]["event_type"] == "completed"
