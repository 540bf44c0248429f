"""Who may do what on a bridge: token verification and the grants tokens carry.

PROTOCOL.md "Access control". A bridge with no key is open (every command
allowed) and may only listen on loopback unless told it is insecure on
purpose. With a key, each connection and each HTTP request holds a
:class:`Grant` decoded from a verified JWT; the server asks the grant before
every subscribe, read, monitor or cancel. Pure apart from PyJWT, which is
pure Python: no sockets here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt

from taskcast.tokens import HS_ALGORITHM, SCOPES
from taskcast.worker_config import ConfigError, Settings

AUTH_DEADLINE = 10.0  # seconds a connection may stay without a valid token
ASYMMETRIC_ALGORITHMS = ["RS256", "ES256"]


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

    def cancels(self, operation_id: str) -> bool:
        return "cancel" in self.scopes and self._covers(operation_id)

    def _covers(self, operation_id: str) -> bool:
        return self.operations is None or operation_id in self.operations


OPEN = Grant(None, frozenset(SCOPES))


class TokenRejected(Exception):
    """A token that grants nothing; ``expired`` tells a stale one from a bad one."""

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class Verifier:
    """Checks signature, algorithm, expiry and claims of tokens for one key."""

    def __init__(self, key: Any, algorithms: list[str]) -> None:
        self.key = key
        self.algorithms = algorithms

    def verify(self, token: str) -> Grant:
        try:
            claims = jwt.decode(
                token, self.key, algorithms=self.algorithms, options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired", expired=True) from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"invalid token: {exc}") from None
        return grant_from(claims)


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
        return Verifier(key, ASYMMETRIC_ALGORITHMS)
    if settings.auth_secret:
        return Verifier(settings.auth_secret, [HS_ALGORITHM])
    return None


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


def origin_allowed(settings: Settings, origin: str | None, host: str | None = None) -> bool:
    """Browsers' Origin against TASKCAST_ALLOWED_ORIGINS (no list: every origin).

    Requests without an Origin (programs, not browsers) and pages the bridge
    serves itself (the dashboard: its origin is the bridge's ``Host``) pass.
    """
    if not settings.allowed_origins or origin is None:
        return True
    if host is not None and urlsplit(origin).netloc == host:
        return True
    return origin in settings.allowed_origins


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
