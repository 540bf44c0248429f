"""The taskcast bridge: streams operations from the Redis event store to WebSocket clients."""
