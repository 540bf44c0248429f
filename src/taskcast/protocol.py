"""Constants of the wire protocol (docs/PROTOCOL.md) that the bridge and the clients share.

Kept apart from the bridge's command parsing so a client importing them pulls
in nothing of the server.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

# Error codes of error frames and HTTP error bodies.
BAD_REQUEST = "bad_request"
UNKNOWN_COMMAND = "unknown_command"
NOT_FOUND = "not_found"
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
RATE_LIMITED = "rate_limited"
# Not in PROTOCOL.md's list: the event store (Redis) cannot be reached right now.
UNAVAILABLE = "unavailable"
