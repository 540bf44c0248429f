"""``taskcast.bridge``: the server that streams operations from the event store to clients.

The hub and the command parsing are pure and import neither Redis nor
websockets; the names below load the server stack only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskcast.lazy import lazy_getattr

if TYPE_CHECKING:
    from taskcast.bridge.background import is_running, start_background, stop_background
    from taskcast.bridge.server import Bridge

_LAZY = {
    "Bridge": ".server",
    "is_running": ".background",
    "start_background": ".background",
    "stop_background": ".background",
}

__all__ = [
    "Bridge",
    "is_running",
    "start_background",
    "stop_background",
]

__getattr__ = lazy_getattr(__name__, _LAZY)
