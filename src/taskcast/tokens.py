"""Tokens for the bridge (PROTOCOL.md "Access control"): minted by the web app, checked by bridges.

A web app that submits work for a user mints a short-lived JWT naming the
operations that user may see; the browser hands it to the bridge. Minting
and the claim names live here, beside the other shared definitions, so the
Celery side, web apps and the bridge agree without importing each other.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable

# ``metrics``: /metrics only, for a Prometheus that should read no operation.
SCOPES = ("read", "monitor", "cancel", "metrics")
SECRET_VARIABLE = "TASKCAST_AUTH_SECRET"
ISSUER_VARIABLE = "TASKCAST_AUTH_ISSUER"
AUDIENCE_VARIABLE = "TASKCAST_AUTH_AUDIENCE"
HS_ALGORITHM = "HS256"


def mint_token(
    operations: Iterable[str] | str,
    *,
    scopes: Iterable[str] = ("read",),
    ttl: float = 300,
    subject: str | None = None,
    secret: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """A JWT letting its holder use ``operations`` (``"*"``: all) with ``scopes``, for ``ttl`` s.

    ``secret`` defaults to TASKCAST_AUTH_SECRET, the bridges' HS256 key; ``issuer`` and
    ``audience`` (the ``iss``/``aud`` claims, left out when empty) to TASKCAST_AUTH_ISSUER
    and TASKCAST_AUTH_AUDIENCE, which bridges configured with them require.
    ``subject`` (the user) is logged and counted by bridges, never trusted.
    """
    import jwt

    key = secret if secret is not None else os.environ.get(SECRET_VARIABLE, "")
    if not key:
        raise ValueError(f"no secret to sign with: pass secret= or set {SECRET_VARIABLE}")
    ops = [operations] if isinstance(operations, str) else list(operations)
    wanted = list(dict.fromkeys(scopes))
    unknown = sorted(set(wanted) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; scopes are {', '.join(SCOPES)}")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    # Rounded up: a token is valid for at least ``ttl`` seconds.
    claims: dict[str, object] = {"exp": math.ceil(time.time() + ttl), "ops": ops, "scopes": wanted}
    if subject is not None:
        claims["sub"] = subject
    for claim, value, variable in (
        ("iss", issuer, ISSUER_VARIABLE),
        ("aud", audience, AUDIENCE_VARIABLE),
    ):
        value = value if value is not None else os.environ.get(variable, "")
        if value:
            claims[claim] = value
    return jwt.encode(claims, key, algorithm=HS_ALGORITHM)
