"""Test hosts as Linux network namespaces on this machine, joined by a switch namespace.

Each host gets a veth pair to a bridge device that lives in a namespace of its
own, with an address from the benchmarking range 198.18.0.0/24 assigned only
inside these namespaces: nothing is added to the machine's own network, and
nothing is routed off it. Cutting a host's link sets its switch port down.
Needs root (``ip netns``); the test fails with that reason where it cannot.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from system_packages import require_binary

NETWORK = "198.18.0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Hosts:
    """Named hosts; ``address[name]`` is each one's IPv4 address."""

    def __init__(self, names: list[str]) -> None:
        tag = str(os.getpid() % 100_000)
        self.switch = f"tcsw{tag}"
        self.namespaces = {name: f"tc{name}{tag}" for name in names}
        self.ports = {name: f"tcp{n}x{tag}" for n, name in enumerate(names)}
        self.address = {name: f"{NETWORK}.{n + 1}" for n, name in enumerate(names)}
        self.processes: list[subprocess.Popen[bytes]] = []

    def create(self) -> Hosts:
        require_binary("ip", "iproute2")
        if os.geteuid() != 0:
            pytest.fail("network namespaces need root (ip netns add)", pytrace=False)
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for name, namespace in self.namespaces.items():
            port = self.ports[name]
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip(
                "-n",
                namespace,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.switch,
            )
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
        return self

    def cut(self, name: str) -> None:
        """Unplug ``name``'s cable: its switch port goes down."""
        _ip("-n", self.switch, "link", "set", self.ports[name], "down")

    def restore(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.ports[name], "up")

    def command(self, name: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[name], *argv]

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        """Run ``argv`` on host ``name``, output to ``log``; stopped by :meth:`destroy`."""
        with open(log, "wb") as out:
            process = subprocess.Popen(
                self.command(name, argv),
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
        for namespace in [*self.namespaces.values(), self.switch]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
