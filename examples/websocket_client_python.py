"""Example Python client for the taskcast bridge.

    python examples/websocket_client_python.py <operation-id>   # stream one operation
    python examples/websocket_client_python.py monitor          # every operation, live
    python examples/websocket_client_python.py stats            # server statistics
    python examples/websocket_client_python.py interactive      # type commands

Set TASKCAST_URL (default ws://127.0.0.1:8765/ws) to reach another bridge.
It uses ``taskcast.client``, which resumes after reconnects without gaps.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from taskcast.client import BridgeUnavailable, CommandError, TaskcastClient

URL = os.environ.get("TASKCAST_URL", "ws://127.0.0.1:8765/ws")


def describe(event: dict) -> str:
    """One readable line for an event."""
    data = event["data"]
    kind = event["event_type"]
    if kind == "progress":
        return f"[{(data.get('progress') or 0) * 100:3.0f}%] {data.get('message', '')}"
    if kind == "status":
        return f"status: {data['status']} {data.get('message', '')}".rstrip()
    if kind == "log":
        return f"{data['level']}: {data['message']}"
    if kind == "result":
        return f"result: {json.dumps(data['result'])}"
    if kind == "completed":
        return f"completed in {data['duration']:.2f}s"
    if kind == "error":
        return f"{data['status']}: {data.get('error_type')}: {data['error']}"
    return json.dumps(data)


async def stream(client: TaskcastClient, operation_id: str) -> None:
    print(f"Monitoring operation: {operation_id}")
    async for event in client.watch(operation_id):
        print(f"#{event['seq']:<4} {describe(event)}")


async def monitor(client: TaskcastClient) -> None:
    async for event in await client.monitor():
        print(f"{event['operation_id'][:8]} #{event['seq']:<4} {describe(event)}")


async def stats(client: TaskcastClient) -> None:
    print(json.dumps(await client.get_stats(), indent=2))


async def interactive(client: TaskcastClient) -> None:
    """Read commands as JSON (or a bare command name) and print the replies; empty line quits."""
    print('Type a command, e.g. get_stats, or {"command": "get_operation", "operation_id": "..."}')
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip() or None:
        try:
            command = json.loads(line)
        except ValueError:
            command = {"command": line}
        if not isinstance(command, dict) or not isinstance(command.get("command"), str):
            print("not a command: give a command name or a JSON object with a 'command' field")
            continue
        try:
            name = command.pop("command")
            print(json.dumps(await client.request(name, **command), indent=2))
        except CommandError as exc:
            print(f"error: {exc}")


async def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    mode = argv[0]
    actions = {"monitor": monitor, "stats": stats, "interactive": interactive}
    try:
        async with TaskcastClient(URL) as client:
            if mode in actions:
                await actions[mode](client)
            else:
                await stream(client, mode)
    except BridgeUnavailable as exc:
        print(exc, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(sys.argv[1:])))
    except KeyboardInterrupt:
        sys.exit(130)
