"""Who may do what on a bridge: token verification, the grants tokens carry, and which
browser pages (``Origin``) and host names (``Host``) the bridge answers.

PROTOCOL.md "Access control". A bridge with no key is open (every command
allowed) and may only listen on loopback unless told it is insecure on
purpose. With a key, each connection and each HTTP request holds a
:class:`Grant` decoded from a verified JWT; the server asks the grant before
every subscribe, read, monitor or cancel. Pure apart from PyJWT, which is
pure Python: no sockets here (a group's members are looked up through the
:class:`Memberships` the caller passes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

import jwt

from taskcast.tokens import HS_ALGORITHM, SCOPES
from taskcast.worker_config import ConfigError, Settings

AUTH_DEADLINE = 10.0  # seconds a connection may stay without a valid token
ASYMMETRIC_ALGORITHMS = ["RS256", "ES256"]
# Scopes an operation id in ``ops`` grants for that operation (and a group's members).
OperationScope = Literal["read", "cancel"]
# Bind addresses that are no name a browser could use.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows: operations (None: all), scopes, expiry (None: never)."""

    operations: frozenset[str] | None
    scopes: frozenset[str]
    expires_at: float | None = None
    subject: str | None = None

    def reads(self, operation_id: str) -> bool:
        if "monitor" in self.scopes:
            return True
        return "read" in self.scopes and self._covers(operation_id)

    def monitors(self) -> bool:
        return "monitor" in self.scopes

    def scrapes(self) -> bool:
        """``/metrics``: Prometheus holds a ``metrics`` token, which reads no operation."""
        return "monitor" in self.scopes or "metrics" in self.scopes

    def cancels(self, operation_id: str) -> bool:
        return "cancel" in self.scopes and self._covers(operation_id)

    def allows(self, scope: OperationScope, operation_id: str) -> bool:
        return self.reads(operation_id) if scope == "read" else self.cancels(operation_id)

    def may_inherit(self, scope: OperationScope) -> bool:
        """Whether an operation could get ``scope`` through its group: only a token that
        has the scope and names some operations (no lookup for any other)."""
        return scope in self.scopes and bool(self.operations)

    def _covers(self, operation_id: str) -> bool:
        return self.operations is None or operation_id in self.operations


OPEN = Grant(None, frozenset(SCOPES))


class TokenRejected(Exception):
    """A token that grants nothing; ``expired`` tells a stale one from a bad one."""

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class Memberships(Protocol):
    """What :func:`permits` needs to know of the store (the bridge's reader)."""

    async def parent_id(self, operation_id: str) -> str | None: ...

    async def is_group(self, operation_id: str) -> bool: ...


async def permits(
    grant: Grant, scope: OperationScope, operation_id: str, memberships: Memberships
) -> bool:
    """Whether ``grant`` allows ``scope`` on ``operation_id``: the one check of WebSocket,
    HTTP and Server-Sent Events.

    A group or chord id in ``ops`` also grants its members (PROTOCOL.md). Only when the
    token does not name the operation itself is the store asked: the member's parent,
    then (when the token names that parent) whether it is a group or chord, not a chain's
    first task, whose later links name it too.
    """
    if grant.allows(scope, operation_id):
        return True
    if not grant.may_inherit(scope):
        return False
    parent = await memberships.parent_id(operation_id)
    return parent is not None and grant.allows(scope, parent) and await memberships.is_group(parent)


class Verifier:
    """Checks signature, algorithm, expiry and claims (``iss``/``aud`` when configured) of
    tokens for one key."""

    def __init__(
        self, key: Any, algorithms: list[str], issuer: str = "", audience: str = ""
    ) -> None:
        self.key = key
        self.algorithms = algorithms
        self.issuer = issuer
        self.audience = audience

    def verify(self, token: str) -> Grant:
        required = ["exp", *(["iss"] if self.issuer else []), *(["aud"] if self.audience else [])]
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                issuer=self.issuer or None,
                audience=self.audience or None,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired", expired=True) from None
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected(self._audience_message(exc)) from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"invalid token: {exc}") from None
        return grant_from(claims)

    def _audience_message(self, exc: jwt.InvalidAudienceError) -> str:
        """A token meant for some other audience is refused (RFC 7519 4.1.3), also by a
        bridge that names none: say so, since the operator may simply have forgotten it."""
        if self.audience:
            return f"invalid token: {exc}"
        return (
            "invalid token: it names an audience (aud) and this bridge has none "
            "(TASKCAST_AUTH_AUDIENCE)"
        )


def grant_from(claims: dict[str, Any]) -> Grant:
    """The grant of verified claims; claims of the wrong shape grant nothing."""
    ops = claims.get("ops", [])
    scopes = claims.get("scopes", ["read"])
    if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
        raise TokenRejected("invalid token: ops must be a list of operation ids")
    if not isinstance(scopes, list) or not set(scopes) <= set(SCOPES):
        raise TokenRejected(f"invalid token: scopes must be a subset of {list(SCOPES)}")
    subject = claims.get("sub")
    return Grant(
        None if "*" in ops else frozenset(ops),
        frozenset(scopes),
        float(claims["exp"]),
        subject if isinstance(subject, str) else None,
    )


def verifier_for(settings: Settings) -> Verifier | None:
    """The verifier of the configured key, or None for an open bridge."""
    if settings.auth_public_key:
        try:
            key = Path(settings.auth_public_key).read_text()
        except OSError as exc:
            raise ConfigError(
                f"TASKCAST_AUTH_PUBLIC_KEY={settings.auth_public_key!r} cannot be read: {exc}"
            ) from None
        return Verifier(key, ASYMMETRIC_ALGORITHMS, settings.auth_issuer, settings.auth_audience)
    if settings.auth_secret:
        return Verifier(
            settings.auth_secret, [HS_ALGORITHM], settings.auth_issuer, settings.auth_audience
        )
    return None


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve every operation to a network without a token key (one line, named)."""
    if settings.auth_secret or settings.auth_public_key or settings.insecure:
        return
    if not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host} without TASKCAST_AUTH_SECRET (or "
            "TASKCAST_AUTH_PUBLIC_KEY): anyone who reaches it could read every operation; "
            "set a key, or pass --insecure (TASKCAST_INSECURE=true) if that is intended"
        )


def host_name(host: str) -> str:
    """The name in a ``Host`` header: no port, no IPv6 brackets, lower-case, no final dot."""
    host = host.strip().lower()
    if host.startswith("[") and "]" in host:
        return host[1 : host.index("]")]
    name, sep, port = host.rpartition(":")
    if sep and ":" not in name and (port.isdigit() or not port):
        host = name
    return host.rstrip(".")


def _address(name: str) -> str:
    """An IP literal in its one spelling (``[::1]``, ``0:0::1`` -> ``::1``); a name as is."""
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return name


@dataclass(frozen=True)
class BrowserPolicy:
    """Which ``Host`` names and ``Origin`` s the bridge answers (PROTOCOL.md 1.2).

    ``hosts`` None: any ``Host``. Without ``TASKCAST_ALLOWED_ORIGINS`` only the bridge's own
    pages (Origin = Host, or the public URL's origin) and clients sending no Origin pass.
    """

    hosts: frozenset[str] | None
    domains: tuple[str, ...]
    own_origins: frozenset[str]
    listed_origins: frozenset[str]

    @classmethod
    def of(cls, settings: Settings) -> BrowserPolicy:
        return cls(
            allowed_hosts(settings),
            tuple(host for host in settings.allowed_hosts if host.startswith(".")),
            frozenset({public_origin(settings.public_url)} - {""}),
            frozenset(settings.allowed_origins),
        )

    def host_allowed(self, host: str | None) -> bool:
        """Against DNS rebinding: a page at ``http://rebound.example:8765`` whose name now
        points at this machine reaches the bridge as its own origin; its ``Host`` gives
        it away. An IP address cannot be rebound (a page whose URL holds the bridge's
        address is the bridge's own origin), and a request without ``Host`` (HTTP/1.0
        probes) comes from no browser."""
        if self.hosts is None or host is None:
            return True
        name = _address(host_name(host))
        return (
            name in self.hosts
            or any(name == domain[1:] or name.endswith(domain) for domain in self.domains)
            or is_ip_address(name)
        )

    def own(self, origin: str, host: str | None) -> bool:
        """A page of the bridge itself: the dashboard (its origin is the ``Host`` it asked),
        or a page at the public URL a proxy forwards from."""
        if origin.lower() in self.own_origins:
            return True
        return host is not None and urlsplit(origin).netloc.lower() == host.strip().lower()

    def listed(self, origin: str | None) -> bool:
        """An origin of ``TASKCAST_ALLOWED_ORIGINS``: the only ones given CORS headers."""
        return origin is not None and origin in self.listed_origins


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The ``Host`` names a bridge answers besides IP addresses, None for any:
    localhost, the bind address and the public URL's host, plus
    ``TASKCAST_ALLOWED_HOSTS`` (PROTOCOL.md 1.2, with or without a key: a rebound
    page on a keyed bridge holds no token, but is not served the dashboard or
    answers either). ``*`` in the list allows every name.
    """
    if "*" in settings.allowed_hosts:
        return None
    names = {"localhost", *settings.allowed_hosts}
    if settings.host not in WILDCARD_HOSTS:
        names.add(_address(settings.host.lower()))
    if settings.public_url:
        names.add(_address(urlsplit(settings.public_url).hostname or ""))
    return frozenset(names)


def public_origin(public_url: str) -> str:
    """The origin (``scheme://host[:port]``) of ``TASKCAST_PUBLIC_URL``, "" when unset."""
    if not public_url:
        return ""
    url = urlsplit(public_url)
    return f"{url.scheme}://{url.netloc}".lower()


def query_token(path: str) -> str | None:
    """The ``token`` query parameter of a request path, if any."""
    values = parse_qs(urlsplit(path).query).get("token")
    return values[-1] if values else None


def request_token(path: str, headers: Mapping[str, str]) -> str | None:
    """An HTTP request's token: ``Authorization: Bearer ...`` or the ``token`` parameter."""
    scheme, _, credentials = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return query_token(path)
