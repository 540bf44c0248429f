"""HTTP on the bridge's port: health, readiness, metrics, the JSON API and static files."""

from __future__ import annotations

import asyncio
import http.client
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from bridge_helpers import WsClient, http_get, running_bridge
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from taskcast.bridge import Bridge
from taskcast.events import Event, progress_data, status_data
from taskcast.store import EventStore


async def get(bridge: Bridge, path: str) -> tuple[int, str, bytes]:
    # The bridge runs on this event loop: a blocking client must run on a thread.
    return await asyncio.to_thread(http_get, f"http://127.0.0.1:{bridge.port}{path}")


async def raw_get(bridge: Bridge, path: str) -> int:
    """Status of a GET whose path is sent exactly as given (no client-side normalising)."""

    def fetch() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()

    return await asyncio.to_thread(fetch)


async def test_health_and_readiness(bridge: Bridge) -> None:
    assert await get(bridge, "/healthz") == (200, "application/json", b'{"status":"ok"}')
    status, _, body = await get(bridge, "/readyz")
    assert status == 200 and orjson.loads(body)["status"] == "ready"


async def test_api_returns_the_websocket_reply_objects(bridge: Bridge, store: EventStore) -> None:
    store.append(Event("status", "op-1", status_data("queued"), operation_type="demo.a"))
    store.append(Event("progress", "op-1", progress_data(0.25, "quarter")))
    store.append(Event("status", "op-2", status_data("queued"), operation_type="demo.b"))
    client = await WsClient.open(bridge.url)
    ws_reply = await client.request("get_operation", operation_id="op-1")
    status, content_type, body = await get(bridge, "/api/operations/op-1")
    assert (status, content_type) == (200, "application/json")
    assert orjson.loads(body) == {"operation": ws_reply["operation"]}
    assert orjson.loads(body)["operation"]["progress"] == 0.25

    status, _, body = await get(bridge, "/api/operations")
    assert [s["operation_id"] for s in orjson.loads(body)["operations"]] == ["op-2", "op-1"]
    _, _, body = await get(bridge, "/api/operations?limit=1&status=active")
    assert [s["operation_id"] for s in orjson.loads(body)["operations"]] == ["op-2"]
    _, _, body = await get(bridge, "/api/operations?limit=1&offset=1")
    assert [s["operation_id"] for s in orjson.loads(body)["operations"]] == ["op-1"]
    _, _, body = await get(bridge, "/api/operations?status=finished")
    assert orjson.loads(body) == {"operations": []}
    _, _, body = await get(bridge, "/api/operations?operation_type=demo.a")
    assert [s["operation_id"] for s in orjson.loads(body)["operations"]] == ["op-1"]
    _, _, body = await get(bridge, "/api/operations?operation_type=demo.%2A&limit=1&offset=1")
    assert [s["operation_id"] for s in orjson.loads(body)["operations"]] == ["op-1"]
    _, _, body = await get(bridge, "/api/operations?operation_type=demo.*&status=finished")
    assert orjson.loads(body) == {"operations": []}

    status, _, body = await get(bridge, "/api/stats")
    stats = orjson.loads(body)["stats"]
    assert status == 200 and stats["connected_clients"] == 1
    assert stats["total_operations"] == 2 and stats["active_operations"] == 2
    await client.close()


async def test_api_errors_use_the_protocol_error_body(bridge: Bridge) -> None:
    status, _, body = await get(bridge, "/api/operations/missing")
    assert status == 404
    error = orjson.loads(body)
    assert (error["status"], error["code"]) == ("error", "not_found") and "missing" in error[
        "message"
    ]
    status, _, body = await get(bridge, "/api/operations?limit=abc")
    assert status == 400 and orjson.loads(body)["code"] == "bad_request"
    status, _, body = await get(bridge, "/api/operations?limit=0")
    assert status == 400 and orjson.loads(body)["code"] == "bad_request"
    status, _, body = await get(bridge, f"/api/operations?operation_type={'x' * 257}")
    assert status == 400 and "operation_type must be 1 to 256" in orjson.loads(body)["message"]
    status, _, _ = await get(bridge, "/nowhere")
    assert status == 404


async def test_metrics_count_clients_events_and_lag(bridge: Bridge, store: EventStore) -> None:
    client = await WsClient.open(bridge.url)
    await client.request("subscribe", operation_id="m")
    store.append(Event("progress", "m", progress_data(0.5)))
    await client.wait_events("m", 1)
    status, content_type, body = await get(bridge, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    text = body.decode()
    assert "taskcast_bridge_connected_clients 1.0" in text
    assert "taskcast_bridge_subscriptions 1.0" in text
    assert "taskcast_bridge_events_in_total 1.0" in text
    assert "taskcast_bridge_events_delivered_total 1.0" in text
    assert "taskcast_bridge_slow_consumer_disconnects_total 0.0" in text
    assert "taskcast_bridge_delivery_lag_seconds_count 1.0" in text
    assert "taskcast_bridge_redis_up 1.0" in text
    await client.close()


@pytest.fixture
async def static_bridge(redis_url: str, prefix: str, tmp_path: Path):
    (tmp_path / "index.html").write_text("<!doctype html><title>dash</title>")
    (tmp_path / "app.js").write_text("export const app = 1;")
    (tmp_path / "style.css").write_text("body{}")
    (tmp_path / "taskcast.js").write_text("export class TaskcastClient {}")
    (tmp_path.parent / "secret.txt").write_text("do not serve")
    async with running_bridge(redis_url, prefix, static_dir=tmp_path) as running:
        yield running


async def test_static_files_with_content_types(static_bridge: Bridge) -> None:
    assert await get(static_bridge, "/") == (
        200,
        "text/html; charset=utf-8",
        b"<!doctype html><title>dash</title>",
    )
    assert await get(static_bridge, "/static/app.js") == (
        200,
        "text/javascript; charset=utf-8",
        b"export const app = 1;",
    )
    assert (await get(static_bridge, "/static/style.css"))[1] == "text/css; charset=utf-8"
    status, content_type, body = await get(static_bridge, "/taskcast.js")
    assert (status, content_type) == (200, "text/javascript; charset=utf-8")
    assert body == b"export class TaskcastClient {}"
    assert (await get(static_bridge, "/static/missing.js"))[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/.hidden",
        "/static//etc/passwd",
        "/static/",
    ],
)
async def test_static_paths_cannot_escape_the_directory(static_bridge: Bridge, path: str) -> None:
    assert await raw_get(static_bridge, path) == 404


async def test_missing_dashboard_files_are_404(redis_url: str, prefix: str, tmp_path: Path) -> None:
    async with running_bridge(redis_url, prefix, static_dir=tmp_path) as running:
        assert (await get(running, "/"))[0] == 404
        assert (await get(running, "/taskcast.js"))[0] == 404


async def test_websocket_upgrades_on_root_and_ws_only(bridge: Bridge) -> None:
    async with connect(f"ws://127.0.0.1:{bridge.port}/") as ws:
        assert orjson.loads(await ws.recv())["event_type"] == "connected"
    with pytest.raises(InvalidStatus, match="404"):
        async with connect(f"ws://127.0.0.1:{bridge.port}/elsewhere"):
            pass
    status, _, body = await get(bridge, "/ws")  # the endpoint exists; it needs an upgrade
    assert status == 426 and orjson.loads(body)["code"] == "bad_request"


async def test_listed_origins_may_import_the_client_and_read_the_api(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "taskcast.js").write_text("export class TaskcastClient {}")
    listed = "http://app.example"
    async with running_bridge(
        redis_url, prefix, static_dir=tmp_path, allowed_origins=(listed,)
    ) as bridge:

        def headers(path: str, origin: str) -> dict[str, str]:
            url = f"http://127.0.0.1:{bridge.port}{path}"
            request = urllib.request.Request(url, headers={"Origin": origin})
            with urllib.request.urlopen(request, timeout=5) as reply:
                return dict(reply.headers)

        for path in ("/taskcast.js", "/api/operations"):
            assert (await asyncio.to_thread(headers, path, listed))[
                "Access-Control-Allow-Origin"
            ] == listed
            with pytest.raises(urllib.error.HTTPError, match="403"):
                await asyncio.to_thread(headers, path, "http://elsewhere.example")


async def request(
    bridge: Bridge, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Any method, with or without a body; the whole reply (the bridge must send one)."""

    def fetch() -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=5)
        try:
            conn.request(method, path, body=body)
            reply = conn.getresponse()
            return reply.status, dict(reply.headers), reply.read()
        finally:
            conn.close()

    return await asyncio.to_thread(fetch)


async def test_http_hygiene_head_other_methods_and_headers(static_bridge: Bridge) -> None:
    status, headers, body = await request(static_bridge, "HEAD", "/healthz")
    assert (status, body) == (200, b"") and int(headers["Content-Length"]) > 0
    assert headers["Server"] == "taskcast"
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for body in (None, b'{"a": 1}', b"x" * 100_000):
            status, _, reply = await request(static_bridge, method, "/api/operations", body)
            assert status == 405, (method, body and len(body))
            assert orjson.loads(reply)["code"] == "bad_request"
    status, headers, _ = await request(static_bridge, "GET", "/")
    assert status == 200 and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, _, _ = await request(static_bridge, "GET", "/healthz")  # still serving
    assert status == 200
