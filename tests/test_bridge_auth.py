"""Access control (PROTOCOL.md 1.1): tokens over WebSocket and HTTP, scopes, origins, exposure.

Every refusal is checked with the close code or error code a client author
reads in the protocol; tokens are real JWTs (PyJWT), minted with
``taskcast.mint_token`` or, for the hostile ones, by hand.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from bridge_helpers import BridgeProcess, WsClient, eventually, running_bridge
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from helpers import AUTH_SECRET, worker_env
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from taskcast import mint_token
from taskcast.bridge import Bridge
from taskcast.client import TaskcastClient
from taskcast.events import Event, Parent, progress_data, status_data
from taskcast.members import GROUP_TYPE
from taskcast.store import EventStore
from taskcast.worker_config import Settings


def store_two_operations(store: EventStore) -> None:
    """``op-a`` and ``op-b``, both queued: one a token names, one it does not."""
    for op in ("op-a", "op-b"):
        store.append(Event("status", op, status_data("queued"), operation_type="t"))


@pytest.fixture
async def secured(redis_url: str, prefix: str, store: EventStore) -> AsyncIterator[Bridge]:
    store_two_operations(store)
    async with running_bridge(redis_url, prefix, auth_secret=AUTH_SECRET) as bridge:
        yield bridge


def token(ops: list[str] | str = "op-a", **kwargs: object) -> str:
    return mint_token(ops, secret=AUTH_SECRET, **kwargs)  # type: ignore[arg-type]


HOSTILE = {
    "forged": lambda: mint_token("op-a", secret="another-key-" + "y" * 32),
    "alg none": lambda: jwt.encode({"exp": time.time() + 60, "ops": ["op-a"]}, None, "none"),
    "malformed": lambda: "not.a.jwt",
    "no exp": lambda: jwt.encode({"ops": ["op-a"]}, AUTH_SECRET, "HS256"),
}


def expired() -> str:
    return jwt.encode({"exp": int(time.time()) - 5, "ops": ["op-a"]}, AUTH_SECRET, "HS256")


async def close_code(url: str) -> int | None:
    """Connect and read until the bridge closes; its close code."""
    async with connect(url) as ws:
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        return ws.close_code


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_a_hostile_token_in_the_url_closes_with_1008(secured: Bridge, kind: str) -> None:
    assert await close_code(f"{secured.url}?token={HOSTILE[kind]()}") == 1008


async def test_an_expired_token_in_the_url_closes_with_4401(secured: Bridge) -> None:
    assert await close_code(f"{secured.url}?token={expired()}") == 4401


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_a_hostile_token_in_auth_is_unauthorized_and_the_connection_lives(
    secured: Bridge, kind: str
) -> None:
    client = await WsClient.open(secured.url)
    for bad in (HOSTILE[kind](), expired()):
        reply = await client.request("auth", token=bad)
        assert reply["code"] == "unauthorized"
    assert (await client.request("ping"))["status"] == "pong"
    await client.close()


async def test_without_a_token_only_auth_and_ping_work(secured: Bridge) -> None:
    client = await WsClient.open(secured.url)
    for command, fields in (
        ("subscribe", {"operation_id": "op-a"}),
        ("get_operation", {"operation_id": "op-a"}),
        ("list_operations", {}),
        ("subscribe_all", {}),
        ("get_stats", {}),
    ):
        assert (await client.request(command, **fields))["code"] == "unauthorized", command
    assert (await client.request("ping"))["status"] == "pong"
    reply = await client.request("auth", token=token())
    assert reply["status"] == "authenticated" and reply["scopes"] == ["read"]
    assert reply["expires_at"] > time.time()
    assert (await client.request("subscribe", operation_id="op-a"))["status"] == "subscribed"
    await client.close()


async def holding(url: str, token: str, via: str) -> WsClient:
    """A client holding ``token``, given in the URL (``via="url"``) or by ``auth``."""
    if via == "url":
        return await WsClient.open(f"{url}?token={token}")
    client = await WsClient.open(url)
    assert (await client.request("auth", token=token))["status"] == "authenticated"
    return client


@pytest.mark.parametrize("via", ["url", "auth"])
async def test_a_token_for_one_operation_cannot_reach_another(secured: Bridge, via: str) -> None:
    client = await holding(secured.url, token("op-a"), via)
    assert (await client.request("subscribe", operation_id="op-a"))["status"] == "subscribed"
    for command, fields in (
        ("subscribe", {"operation_id": "op-b"}),
        ("get_operation", {"operation_id": "op-b"}),
        ("cancel", {"operation_id": "op-a"}),  # read scope only
        ("list_operations", {}),
        ("subscribe_all", {}),
        ("get_stats", {}),
    ):
        assert (await client.request(command, **fields))["code"] == "forbidden", command
    assert (await client.request("ping"))["status"] == "pong"  # still connected
    await client.close()


async def test_a_cancel_token_for_one_operation_cannot_cancel_another(
    secured: Bridge, store: EventStore
) -> None:
    cancel_a = token("op-a", scopes=["read", "cancel"])
    client = await holding(secured.url, cancel_a, "url")
    assert (await client.request("cancel", operation_id="op-b"))["code"] == "forbidden"
    cancel_b = f"http://127.0.0.1:{secured.port}/api/operations/op-b/cancel"
    assert (await asyncio.to_thread(http, cancel_b, cancel_a, method="POST"))[0] == 403
    assert store.snapshot("op-b")["status"] == "queued"  # B goes on
    # The same token does cancel A: the refusals were about B, not a useless token.
    reply = await client.request("cancel", operation_id="op-a")
    assert (reply["status"], reply["operation_id"]) == ("cancelling", "op-a")
    await eventually(lambda: store.snapshot("op-a")["status"] == "revoked")
    assert store.snapshot("op-b")["status"] == "queued"
    await client.close()


async def test_a_monitor_token_reads_everything(secured: Bridge) -> None:
    client = await WsClient.open(f"{secured.url}?token={token([], scopes=['monitor'])}")
    assert (await client.request("get_operation", operation_id="op-b"))["operation"]
    listed = (await client.request("list_operations"))["operations"]
    assert {op["operation_id"] for op in listed} >= {"op-a", "op-b"}
    assert (await client.request("subscribe_all"))["status"] == "subscribed"
    await client.close()


async def test_auth_refreshes_a_token_before_it_expires(secured: Bridge) -> None:
    client = await WsClient.open(f"{secured.url}?token={token(ttl=1.5)}")
    refreshed = await client.request("auth", token=token(ttl=60))
    assert refreshed["status"] == "authenticated"
    await asyncio.sleep(2.5)  # past the first token's expiry: the clock is what is tested
    assert (await client.request("ping"))["status"] == "pong"
    await client.close()


async def test_a_token_expiring_on_a_live_connection_closes_it_with_4401(secured: Bridge) -> None:
    client = await WsClient.open(f"{secured.url}?token={token(ttl=1)}")
    assert await client.wait_closed(timeout=5) == 4401


async def test_no_token_in_time_closes_with_1008(
    secured: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("taskcast.bridge.server.AUTH_DEADLINE", 0.5)
    client = await WsClient.open(secured.url)
    assert await client.wait_closed(timeout=5) == 1008


def http(
    url: str, bearer: str | None = None, origin: str | None = None, method: str = "GET"
) -> tuple[int, dict]:
    headers = {}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if origin:
        headers["Origin"] = origin
    try:
        request = urllib.request.Request(url, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as err:
        assert orjson.loads(err.read())["status"] == "error"
        return err.code, dict(err.headers)


async def test_http_needs_a_token_and_honours_its_scope(secured: Bridge) -> None:
    base = f"http://127.0.0.1:{secured.port}"

    async def status(path: str, bearer: str | None = None) -> int:
        return (await asyncio.to_thread(http, base + path, bearer))[0]

    assert await status("/api/operations/op-a") == 401
    for make in (*HOSTILE.values(), expired):
        assert await status("/api/operations/op-a", make()) == 401
    assert await status("/api/operations/op-a", token("op-a")) == 200
    assert await status(f"/api/operations/op-a?token={token('op-a')}") == 200
    assert await status("/api/operations/op-b", token("op-a")) == 403
    assert await status("/api/operations", token("op-a")) == 403
    assert await status("/api/stats", token("op-a")) == 403
    assert await status("/api/operations", token([], scopes=["monitor"])) == 200
    assert await status("/healthz") == 200  # health and the dashboard page stay open


def key_pair(algorithm: str) -> tuple[Any, bytes]:
    """A new private key for ``algorithm`` (RS256 or ES256) and its public key as PEM."""
    if algorithm == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_tokens_signed_by_a_private_key_are_checked_with_the_public_key_file(
    task_settings: Settings, prefix: str, store: EventStore, tmp_path: Path, algorithm: str
) -> None:
    private, public = key_pair(algorithm)
    other, _ = key_pair(algorithm)
    (tmp_path / "taskcast.pub").write_bytes(public)
    store_two_operations(store)

    def signed(key: Any) -> str:
        return jwt.encode({"exp": int(time.time()) + 60, "ops": ["op-a"]}, key, algorithm)

    env = worker_env(
        replace(task_settings, prefix=prefix, auth_public_key=str(tmp_path / "taskcast.pub"))
    )
    assert env["TASKCAST_AUTH_PUBLIC_KEY"] == str(tmp_path / "taskcast.pub")
    bridge = BridgeProcess("--port", "0", env=env)
    try:
        bridge.wait_listening()
        client = await WsClient.open(f"{bridge.url}?token={signed(private)}")
        assert (await client.request("subscribe", operation_id="op-a"))["status"] == "subscribed"
        assert (await client.request("subscribe", operation_id="op-b"))["code"] == "forbidden"
        await client.close()
        api = f"http://127.0.0.1:{bridge.port}/api/operations/op-a"
        assert (await asyncio.to_thread(http, api, signed(private)))[0] == 200
        # Signed by another key pair, or an HS256 token from a shared secret: refused.
        for refused in (signed(other), token("op-a")):
            assert await close_code(f"{bridge.url}?token={refused}") == 1008
            assert (await asyncio.to_thread(http, api, refused))[0] == 401
    finally:
        bridge.stop()


async def test_origin_allowlist_refuses_other_browser_origins(redis_url: str, prefix: str) -> None:
    allowed = "https://app.example"
    async with running_bridge(redis_url, prefix, allowed_origins=(allowed,)) as bridge:
        async with connect(bridge.url, origin=allowed) as ws:  # type: ignore[arg-type]
            assert orjson.loads(await ws.recv())["event_type"] == "connected"
        with pytest.raises(InvalidStatus) as refused:
            await connect(bridge.url, origin="https://evil.example")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        base = f"http://127.0.0.1:{bridge.port}"
        status, headers = await asyncio.to_thread(http, base + "/taskcast.js", None, allowed)
        assert status == 200 and headers["Access-Control-Allow-Origin"] == allowed
        status, headers = await asyncio.to_thread(http, base + "/taskcast.js")
        assert status == 200 and "Access-Control-Allow-Origin" not in headers
        status, _ = await asyncio.to_thread(http, base + "/healthz", None, "https://evil.example")
        assert status == 403


def test_serving_a_network_address_without_a_key_is_refused_in_one_line(redis_url: str) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "taskcast", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "TASKCAST_AUTH_SECRET" in refused.stderr and "--insecure" in refused.stderr
    env = dict(os.environ, TASKCAST_REDIS_URL=redis_url)  # the test's own Redis
    insecure = BridgeProcess("--host", "0.0.0.0", "--port", "0", "--insecure", env=env)
    try:
        insecure.wait_listening()
    finally:
        insecure.stop()


async def emit_for(store: EventStore, operation_id: str, count: int, interval: float) -> None:
    for i in range(count):
        store.append(Event("progress", operation_id, progress_data((i + 1) / count)))
        await asyncio.sleep(interval)
    store.append(Event("completed", operation_id, {"status": "completed"}))


@pytest.mark.parametrize("refresh", [True, False], ids=["auth-refresh", "reconnect-on-4401"])
async def test_the_python_client_renews_short_tokens_and_misses_no_event(
    secured: Bridge, store: EventStore, refresh: bool
) -> None:
    minted: list[str] = []

    def get_token() -> str:
        minted.append(token("op-live", ttl=1))
        return minted[-1]

    store.append(Event("status", "op-live", status_data("queued")))
    async with TaskcastClient(secured.url, get_token=get_token, refresh=refresh) as client:
        emitting = asyncio.create_task(emit_for(store, "op-live", 40, 0.1))
        seqs = [event["seq"] async for event in client.watch("op-live")]
        await emitting
    assert seqs == list(range(1, 43))  # queued, 40 progress, completed: no gap, no repeat
    assert len(minted) >= 3  # the 4 s run outlived at least two tokens (each 1-2 s)
    reconnected = secured.hub.stats.connections_total > 1
    assert reconnected is not refresh


def test_the_cli_takes_a_token_from_the_flag_or_the_environment(
    task_settings: Settings, prefix: str, store: EventStore
) -> None:
    store.append(Event("status", "op-cli", status_data("queued")))
    store.append(Event("completed", "op-cli", {"status": "completed"}))
    env = worker_env(replace(task_settings, prefix=prefix, auth_secret=AUTH_SECRET))
    bridge = BridgeProcess("--port", "0", env=env)
    try:
        bridge.wait_listening()
        base = [sys.executable, "-m", "taskcast", "watch", "op-cli", "--url", bridge.url]

        def watch(*extra: str, **variables: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*base, *extra],
                env={**env, **variables},
                capture_output=True,
                text=True,
                timeout=30,
            )

        refused = watch("--wait", "0")
        assert refused.returncode == 5 and "unauthorized" in refused.stderr
        assert watch("--token", token("op-cli")).returncode == 0
        assert watch(TASKCAST_TOKEN=token("op-cli")).returncode == 0
        forbidden = watch("--token", token("op-other"))
        assert forbidden.returncode == 5 and "forbidden" in forbidden.stderr
        assert token("op-cli") not in "\n".join(bridge.lines)  # tokens are never logged
    finally:
        bridge.stop()


@pytest.fixture
async def grouped(redis_url: str, prefix: str, store: EventStore) -> AsyncIterator[Bridge]:
    """A secured bridge over group ``g1`` (members ``m1``, ``m2``), a chain whose second
    link names ``root``, and ``op-b``, in no group."""
    group = Parent("g1", operation_type=GROUP_TYPE)
    for member in ("m1", "m2"):
        store.append(Event("status", member, status_data("queued"), parent=group))
    store.append(Event("status", "root", status_data("queued")))
    link = Parent("root", aggregates=False)
    store.append(Event("status", "link2", status_data("queued"), parent=link))
    store_two_operations(store)
    async with running_bridge(redis_url, prefix, auth_secret=AUTH_SECRET) as bridge:
        yield bridge


async def test_a_group_token_reads_its_members_everywhere_and_nothing_else(
    grouped: Bridge,
) -> None:
    group_token = token("g1")
    client = await WsClient.open(f"{grouped.url}?token={group_token}")
    for command in ("subscribe", "get_operation"):
        reply = await client.request(command, operation_id="m1")
        assert "code" not in reply and reply["operation"]["parent_id"] == "g1", command
        assert (await client.request(command, operation_id="op-b"))["code"] == "forbidden"
    await client.close()
    base = f"http://127.0.0.1:{grouped.port}"
    for path in ("/api/operations/m2", "/api/operations/m2/events"):
        assert (await asyncio.to_thread(sse_status, base + path, group_token)) == 200, path
    for path in ("/api/operations/op-b", "/api/operations/op-b/events"):
        assert (await asyncio.to_thread(sse_status, base + path, group_token)) == 403, path
    # A chain's later link names its first task too; that task's token is no group's.
    root_token = token("root")
    assert (await asyncio.to_thread(sse_status, base + "/api/operations/link2", root_token)) == 403


async def test_a_group_cancel_token_cancels_a_member_and_nothing_else(
    grouped: Bridge, store: EventStore
) -> None:
    group_token = token("g1", scopes=["read", "cancel"])
    client = await WsClient.open(f"{grouped.url}?token={group_token}")
    assert (await client.request("cancel", operation_id="op-b"))["code"] == "forbidden"
    assert (await client.request("cancel", operation_id="m1"))["status"] == "cancelling"
    await client.close()
    cancel = f"http://127.0.0.1:{grouped.port}/api/operations/%s/cancel"
    assert (await asyncio.to_thread(http, cancel % "op-b", group_token, method="POST"))[0] == 403
    assert (await asyncio.to_thread(http, cancel % "m2", group_token, method="POST"))[0] == 202
    assert [store.snapshot(op)["status"] for op in ("m1", "m2", "op-b")] == [
        "revoked",
        "revoked",
        "queued",
    ]


def sse_status(url: str, bearer: str) -> int:
    """The status of a GET (an event stream is not read past its head)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
async def named(redis_url: str, prefix: str, store: EventStore) -> AsyncIterator[Bridge]:
    """A secured bridge that requires its issuer and audience."""
    store_two_operations(store)
    async with running_bridge(
        redis_url,
        prefix,
        auth_secret=AUTH_SECRET,
        auth_issuer="https://app.example",
        auth_audience="taskcast",
    ) as bridge:
        yield bridge


async def test_a_bridge_with_an_issuer_and_audience_requires_both(named: Bridge) -> None:
    right = {"issuer": "https://app.example", "audience": "taskcast"}
    refused = [
        token(),
        token(issuer="https://app.example"),
        token(audience="taskcast"),
        token(issuer="https://other.example", audience="taskcast"),
        token(issuer="https://app.example", audience="another-service"),
    ]
    api = f"http://127.0.0.1:{named.port}/api/operations/op-a"
    for bad in refused:
        assert await close_code(f"{named.url}?token={bad}") == 1008
        assert (await asyncio.to_thread(http, api, bad))[0] == 401
    good = token(**right)
    assert (await asyncio.to_thread(http, api, good))[0] == 200
    client = await WsClient.open(f"{named.url}?token={good}")
    assert (await client.request("subscribe", operation_id="op-a"))["status"] == "subscribed"
    await client.close()


async def test_a_token_for_an_audience_is_refused_by_a_bridge_that_names_none(
    secured: Bridge,
) -> None:
    client = await WsClient.open(secured.url)
    reply = await client.request("auth", token=token(audience="taskcast"))
    assert reply["code"] == "unauthorized" and "TASKCAST_AUTH_AUDIENCE" in reply["message"]
    issued = await client.request("auth", token=token(issuer="https://app.example"))
    assert issued["status"] == "authenticated"  # no issuer configured: iss is not checked
    await client.close()


def test_mint_token_takes_issuer_and_audience_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKCAST_AUTH_ISSUER", "https://app.example")
    monkeypatch.setenv("TASKCAST_AUTH_AUDIENCE", "taskcast")
    claims = jwt.decode(token(), AUTH_SECRET, ["HS256"], audience="taskcast")
    assert (claims["iss"], claims["aud"]) == ("https://app.example", "taskcast")
    plain = jwt.decode(token(issuer="", audience=""), AUTH_SECRET, ["HS256"])
    assert "iss" not in plain and "aud" not in plain


async def test_metrics_on_a_bridge_with_a_key_need_a_monitor_or_metrics_token(
    secured: Bridge,
) -> None:
    metrics = f"http://127.0.0.1:{secured.port}/metrics"
    assert (await asyncio.to_thread(http, metrics))[0] == 401
    assert (await asyncio.to_thread(http, metrics, token("op-a")))[0] == 403
    for scopes in (["monitor"], ["metrics"]):
        status, headers = await asyncio.to_thread(http, metrics, token([], scopes=scopes))
        assert status == 200 and headers["Content-Type"].startswith("text/plain"), scopes
    scraper = token([], scopes=["metrics"])  # reads no operation
    api = f"http://127.0.0.1:{secured.port}/api/operations"
    assert (await asyncio.to_thread(http, api, scraper))[0] == 403
    assert (await asyncio.to_thread(http, f"{api}/op-a", scraper))[0] == 403
