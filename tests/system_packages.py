"""Install a Debian package a test needs when its binary is missing (CI machines start bare)."""

from __future__ import annotations

import os
import shutil
import subprocess


def ensure_binary(binary: str, package: str) -> str:
    """Path of ``binary``, installing ``package`` with apt-get first if it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{binary} is missing; install the Debian package {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"installing {package} did not provide {binary}")
    return found
