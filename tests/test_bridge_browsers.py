"""Pages in a user's browser (PROTOCOL.md 1.2, issue 18): same-origin by default, a ``Host``
allowlist against DNS rebinding, no CORS-simple cancel, CORS preflights, ``/metrics``.

Each request is sent the way the attacking page's browser sends it (its ``Origin``, its
``Host``, its content type), over a real socket to a real bridge; what is asserted is what
that page would get: the status, the CORS headers, and whether the task was cancelled.
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import AsyncIterator

import orjson
import pytest
from bridge_helpers import running_bridge
from helpers import AUTH_SECRET
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from taskcast import mint_token
from taskcast.bridge import Bridge
from taskcast.events import Event, status_data
from taskcast.store import EventStore
from taskcast.worker_config import ConfigError, load_settings

EVIL = "https://evil.example"
APP = "https://app.example"
REBOUND = "rebind.evil.example"
# Every surface that serves operation data, as a page would ask for it.
DATA_PATHS = [
    "/api/operations",
    "/api/operations/op-a",
    "/api/stats",
    "/api/config",
    "/api/events",
    "/api/operations/op-a/events",
    "/metrics",
]
HANDSHAKE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)

Reply = tuple[int, dict[str, str], bytes]


def exchange(port: int, method: str, path: str, headers: dict[str, str]) -> Reply:
    """One request with exactly these headers (``Host`` too, when given); the status, the
    headers (lower-case names) and the body (none for an event stream that opened)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers)
        reply = conn.getresponse()
        streaming = reply.getheader("Content-Type", "").startswith("text/event-stream")
        body = b"" if streaming else reply.read()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, body
    finally:
        conn.close()


async def send(bridge: Bridge, method: str, path: str, **headers: str) -> Reply:
    """``exchange`` on a thread: the bridge runs on this event loop."""
    return await asyncio.to_thread(exchange, bridge.port or 0, method, path, headers)


async def handshake(bridge: Bridge, host: str, origin: str) -> int:
    """The status a WebSocket handshake to ``/ws`` gets with this ``Host`` and ``Origin``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    head = f"GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n{HANDSHAKE}\r\n"
    writer.write(head.encode())
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return int(status_line.split()[1])


def own(bridge: Bridge) -> str:
    """The ``Host`` of the bridge's own pages (the dashboard's)."""
    return f"127.0.0.1:{bridge.port}"


@pytest.fixture
async def open_bridge(redis_url: str, prefix: str, store: EventStore) -> AsyncIterator[Bridge]:
    """A default bridge: no key, loopback, no allowlist (the one issue 18 attacked)."""
    store.append(Event("status", "op-a", status_data("queued"), operation_type="t"))
    async with running_bridge(redis_url, prefix) as bridge:
        yield bridge


@pytest.fixture
async def listing_bridge(redis_url: str, prefix: str, store: EventStore) -> AsyncIterator[Bridge]:
    """A keyless bridge that lists one other origin, ``APP``."""
    store.append(Event("status", "op-a", status_data("queued"), operation_type="t"))
    async with running_bridge(redis_url, prefix, allowed_origins=(APP,)) as bridge:
        yield bridge


@pytest.mark.parametrize("path", DATA_PATHS)
@pytest.mark.parametrize("origin", [EVIL, "null"])
async def test_a_page_on_another_origin_gets_403_and_no_cors(
    open_bridge: Bridge, path: str, origin: str
) -> None:
    status, headers, body = await send(open_bridge, "GET", path, Origin=origin)
    assert status == 403 and "access-control-allow-origin" not in headers
    assert orjson.loads(body)["code"] == "forbidden"
    assert "TASKCAST_ALLOWED_ORIGINS" in orjson.loads(body)["message"] or path == "/metrics"


async def test_a_page_on_another_origin_cannot_open_a_websocket(open_bridge: Bridge) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(open_bridge.url, origin=EVIL)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("path", DATA_PATHS)
async def test_the_bridges_own_pages_and_programs_are_served_without_cors(
    open_bridge: Bridge, path: str
) -> None:
    for headers in ({"Origin": f"http://{own(open_bridge)}"}, {}):
        status, answer, _ = await send(open_bridge, "GET", path, **headers)
        assert status == 200, (path, headers)
        assert "access-control-allow-origin" not in answer
    async with connect(open_bridge.url, origin=f"http://{own(open_bridge)}") as ws:  # type: ignore[arg-type]
        assert orjson.loads(await ws.recv())["event_type"] == "connected"


async def test_a_listed_origin_gets_its_own_origin_back_never_a_star(
    listing_bridge: Bridge,
) -> None:
    for path in ("/api/operations", "/api/operations/op-a/events", "/taskcast.js"):
        status, headers, _ = await send(listing_bridge, "GET", path, Origin=APP)
        assert status == 200, path
        assert headers["access-control-allow-origin"] == APP and headers["vary"] == "Origin"
    async with connect(listing_bridge.url, origin=APP) as ws:  # type: ignore[arg-type]
        assert orjson.loads(await ws.recv())["event_type"] == "connected"
    assert (await send(listing_bridge, "GET", "/api/operations", Origin=EVIL))[0] == 403
    # Probes answer but carry no CORS headers; /metrics is for no other origin, listed or not.
    for probe in ("/healthz", "/readyz"):
        status, headers, _ = await send(listing_bridge, "GET", probe, Origin=APP)
        assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, _ = await send(listing_bridge, "GET", "/metrics", Origin=APP)
    assert status == 403 and "access-control-allow-origin" not in headers


async def test_preflight_answers_a_listed_origin_and_refuses_others(
    listing_bridge: Bridge,
) -> None:
    asked = {"Access-Control-Request-Method": "POST"}
    asked["Access-Control-Request-Headers"] = "authorization, content-type"
    path = "/api/operations/op-a/cancel"
    status, headers, _ = await send(listing_bridge, "OPTIONS", path, Origin=APP, **asked)
    assert status == 204
    assert headers["access-control-allow-origin"] == APP and headers["vary"] == "Origin"
    assert "POST" in headers["access-control-allow-methods"]
    allowed_headers = headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert int(headers["access-control-max-age"]) > 0
    status, headers, body = await send(listing_bridge, "OPTIONS", path, Origin=EVIL, **asked)
    assert status == 403 and "access-control-allow-origin" not in headers
    assert orjson.loads(body)["code"] == "forbidden"


async def test_a_cross_site_simple_cancel_is_refused_and_the_task_goes_on(
    listing_bridge: Bridge, store: EventStore
) -> None:
    """A form or ``fetch(..., {mode: "no-cors"})`` posts ``text/plain`` without a preflight."""
    path = "/api/operations/op-a/cancel"
    simple = {"Content-Type": "text/plain"}
    status, _, body = await send(listing_bridge, "POST", path, Origin=EVIL, **simple)
    assert status == 403 and orjson.loads(body)["code"] == "forbidden"
    for origin in (APP, f"http://{own(listing_bridge)}"):  # even where pages may read
        status, _, body = await send(listing_bridge, "POST", path, Origin=origin, **simple)
        assert status == 415 and "application/json" in orjson.loads(body)["message"]
    status, _, _ = await send(listing_bridge, "POST", path)  # no type at all: a bare form
    assert status == 415
    assert store.snapshot("op-a")["status"] == "queued"
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    status, headers, body = await send(listing_bridge, "POST", path, Origin=APP, **json_type)
    assert status == 202 and orjson.loads(body)["status"] == "cancelling"
    assert headers["access-control-allow-origin"] == APP
    assert store.snapshot("op-a")["status"] == "revoked"


@pytest.mark.parametrize(
    "path", ["/api/operations", "/api/operations/op-a", "/api/events", "/", "/metrics"]
)
async def test_a_rebound_host_is_refused_even_with_its_matching_origin(
    open_bridge: Bridge, path: str
) -> None:
    rebound = f"{REBOUND}:{open_bridge.port}"
    status, _, body = await send(open_bridge, "GET", path, Host=rebound, Origin=f"http://{rebound}")
    assert status == 403
    assert "TASKCAST_ALLOWED_HOSTS" in orjson.loads(body)["message"]
    status, _, _ = await send(open_bridge, "GET", path, Host=rebound)  # a same-origin GET
    assert status == 403
    assert await handshake(open_bridge, rebound, f"http://{rebound}") == 403
    assert await handshake(open_bridge, own(open_bridge), f"http://{own(open_bridge)}") == 101


async def test_the_default_host_names_and_probes(open_bridge: Bridge) -> None:
    port = open_bridge.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.2", f"[::1]:{port}"):
        assert (await send(open_bridge, "GET", "/api/operations", Host=host))[0] == 200, host
    # Orchestrators probe by whatever address they know: the probes answer any Host.
    for probe in ("/healthz", "/readyz"):
        assert (await send(open_bridge, "GET", probe, Host=REBOUND))[0] == 200


async def test_allowed_hosts_and_public_url_add_names(redis_url: str, prefix: str) -> None:
    async with running_bridge(
        redis_url,
        prefix,
        allowed_hosts=("tasks.example.com", ".corp.example"),
        public_url="https://bridge.example.org/taskcast",
    ) as bridge:
        for host in (
            "tasks.example.com",
            "a.b.corp.example:443",
            "bridge.example.org",
            "localhost",
        ):
            assert (await send(bridge, "GET", "/api/operations", Host=host))[0] == 200, host
        assert (await send(bridge, "GET", "/api/operations", Host="corp.example.net"))[0] == 403
        # The public URL's origin is the bridge's own: a page served there through a proxy.
        status, headers, _ = await send(
            bridge,
            "GET",
            "/api/operations",
            Host="bridge.example.org",
            Origin="https://bridge.example.org",
        )
        assert status == 200 and "access-control-allow-origin" not in headers


async def test_a_bridge_with_a_key_checks_host_names_too_and_ip_addresses_pass(
    redis_url: str, prefix: str
) -> None:
    """A keyed bridge behind a load balancer answers its addresses, and the names it is
    told (public URL, hosts); ``*`` turns the check off."""
    reader = mint_token("*", scopes=["monitor"], secret=AUTH_SECRET)
    bearer = {"Authorization": f"Bearer {reader}"}
    named = {"auth_secret": AUTH_SECRET, "public_url": "https://tasks.example.com"}
    async with running_bridge(redis_url, prefix, **named) as bridge:
        assert (await send(bridge, "GET", "/api/operations", Host=REBOUND, **bearer))[0] == 403
        for host in ("tasks.example.com", "10.1.2.3:8765", "[2001:db8::1]"):
            assert (await send(bridge, "GET", "/api/operations", Host=host, **bearer))[0] == 200
    async with running_bridge(redis_url, prefix, allowed_hosts=("*",)) as bridge:
        assert (await send(bridge, "GET", "/api/operations", Host=REBOUND))[0] == 200


@pytest.mark.parametrize("value", ["http://tasks.example.com", "tasks.example.com:8765", "a/b"])
def test_a_bad_allowed_hosts_value_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="TASKCAST_ALLOWED_HOSTS"):
        load_settings({"TASKCAST_ALLOWED_HOSTS": value})


@pytest.mark.parametrize("value", ["tasks.example.com", "ftp://tasks.example.com"])
def test_a_bad_public_url_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="TASKCAST_PUBLIC_URL"):
        load_settings({"TASKCAST_PUBLIC_URL": value})
