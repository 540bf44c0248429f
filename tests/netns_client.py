"""``python netns_client.py URL OPERATION_ID``: follow one operation, one JSON line per event.

Run inside a test host's namespace (see netns_hosts.py), where the test process
itself cannot connect; exits after the terminal event.
"""

from __future__ import annotations

import sys

import orjson
from websockets.sync.client import connect

TERMINAL = {"completed", "error"}


def main(url: str, operation_id: str) -> None:
    with connect(url, open_timeout=10) as ws:
        ws.recv(timeout=10)  # connected
        ws.send(orjson.dumps({"command": "subscribe", "operation_id": operation_id}).decode())
        while True:
            frame = orjson.loads(ws.recv(timeout=120))
            if "seq" not in frame:
                continue
            print(orjson.dumps(frame).decode(), flush=True)
            if frame["event_type"] in TERMINAL:
                return


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
