"""The taskcast bridge: streams operations from the Redis event store to WebSocket clients."""

from .background import is_running, start_background, stop_background
from .server import Bridge

__all__ = ["Bridge", "is_running", "start_background", "stop_background"]
