"""The ``taskcast`` command's exit codes (taskcast.exits; the README's table under
"Watching"), each met the way a user meets it: the real command against a real Redis,
bridge and tokens, failing in one line that says what to do. A failed task (1), an unknown
id (4) and an absent bridge (3) are in test_clients.py, cancel's codes in test_cancel.py."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis
from bridge_helpers import RestartableBridge, eventually, running_bridge
from helpers import AUTH_SECRET, one_line, taskcast, wait_for, worker_env

from taskcast import mint_token
from taskcast.client import token_expires_in
from taskcast.embedded_redis import EmbeddedRedis
from taskcast.events import Event, status_data
from taskcast.store import EventStore
from taskcast.worker_config import Settings, load_settings


@pytest.fixture
def stopped_redis() -> Iterator[str]:
    """The URL of a private redis-server that was started and stopped: a Redis that is down."""
    with EmbeddedRedis() as server:
        server.stop()
        yield server.url


@pytest.mark.parametrize(
    ("down", "variable"),
    [
        (("redis_url", "broker_url", "result_backend"), "TASKCAST_REDIS_URL"),  # one Redis
        (("redis_url",), "TASKCAST_REDIS_URL"),
        (("broker_url",), "CELERY_BROKER_URL"),
    ],
)
def test_submit_with_redis_down_sends_nothing_and_says_so_at_once(
    task_settings: Settings, prefix: str, stopped_redis: str, down: tuple[str, ...], variable: str
) -> None:
    settings = replace(task_settings, prefix=prefix, **dict.fromkeys(down, stopped_redis))
    started = time.monotonic()
    run = taskcast("submit", "test.plain_add", "--arg", "a=1", "--watch", env=worker_env(settings))
    assert time.monotonic() - started < 6  # it was 21 s of retries, then a traceback
    assert run.returncode == 3, run.stderr
    line = one_line(run)
    assert line.startswith("taskcast submit: ") and "does not answer" in line and variable in line
    assert run.stdout == ""  # nothing was sent: no id to follow


def test_bad_usage_exits_2_in_one_line_naming_the_help() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKCAST_")}
    missing = taskcast("watch", env=env)
    assert missing.returncode == 2
    assert one_line(missing) == (
        "taskcast watch: Missing argument 'OPERATION_ID' (see 'python -m taskcast watch --help')"
    )
    unknown = taskcast("frob", env=env)
    assert unknown.returncode == 2 and "No such command 'frob'" in one_line(unknown)
    bad_setting = taskcast("stats", env={**env, "TASKCAST_PORT": "eighty"})
    assert bad_setting.returncode == 2 and "TASKCAST_PORT" in one_line(bad_setting)


def test_an_expired_token_exits_5_at_connect_and_in_the_middle_of_a_watch(
    secured_bridge: RestartableBridge, store: EventStore
) -> None:
    store.append(Event("status", "op-long", status_data("running")))  # it never ends
    expired = mint_token("op-long", ttl=1, secret=AUTH_SECRET)
    wait_for(lambda: token_expires_in(expired) < 0, timeout=5)
    url, env = secured_bridge.url, secured_bridge.env
    refused = taskcast("watch", "op-long", "--url", url, "--token", expired, env=env)
    assert refused.returncode == 5, refused.stderr
    line = one_line(refused)
    assert "token has expired" in line and "--token" in line
    # The bridge closes the watch's connection when its token expires (4401).
    cut = taskcast(
        "watch",
        "op-long",
        "--url",
        url,
        "--token",
        mint_token("op-long", ttl=2, secret=AUTH_SECRET),
        env=env,
    )
    assert cut.returncode == 5, cut.stderr
    assert "token has expired" in one_line(cut)


def test_refused_tokens_exit_5_naming_what_to_pass(secured_bridge: RestartableBridge) -> None:
    url, env = secured_bridge.url, secured_bridge.env
    read_only = taskcast(
        "stats", "--url", url, "--token", mint_token("*", secret=AUTH_SECRET), env=env
    )
    assert read_only.returncode == 5, read_only.stderr
    line = one_line(read_only)
    assert "forbidden" in line and "a token with the monitor scope: --token" in line
    monitor = mint_token([], scopes=["monitor"], secret=AUTH_SECRET)
    assert taskcast("stats", "--url", url, "--token", monitor, env=env).returncode == 0
    forged = mint_token("*", scopes=["monitor"], secret="not-the-bridge-key" * 3)
    refused = taskcast("stats", "--url", url, "--token", forged, env=env)
    assert refused.returncode == 5, refused.stderr
    line = one_line(refused)
    assert "refused the token (invalid token: Signature verification failed)" in line
    assert "--token" in line


async def test_watch_rides_out_a_store_outage_of_up_to_wait_seconds_then_exits_3(
    prefix: str,
) -> None:
    """The bridge answers but its Redis is down: something is unreachable (3), unless
    Redis is back within --wait (a restart), when the watch goes on as usual."""
    with EmbeddedRedis() as server:
        store = EventStore(redis.Redis.from_url(server.url), prefix=prefix)
        env = worker_env(load_settings({}, redis_url=server.url, prefix=prefix))
        async with running_bridge(server.url, prefix) as bridge:
            server.stop()
            watch = ("watch", "op", "--url", bridge.url)
            gone = await asyncio.to_thread(taskcast, *watch, "--wait", "1", env=env)
            assert gone.returncode == 3, gone.stderr
            line = one_line(gone)
            assert "unavailable" in line and "TASKCAST_REDIS_URL" in line

            later = asyncio.ensure_future(
                asyncio.to_thread(taskcast, *watch, "--wait", "60", env=env)
            )
            await eventually(lambda: bridge.hub.connections, timeout=20)
            await asyncio.to_thread(server.start)
            await asyncio.to_thread(store.append, Event("status", "op", status_data("queued")))
            await asyncio.to_thread(store.append, Event("completed", "op", {"status": "completed"}))
            followed = await later
    assert followed.returncode == 0, followed.stderr
    assert "completed" in followed.stdout
