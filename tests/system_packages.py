"""System programs some tests need: found on PATH, never installed by a test.

``.ci/run`` installs them on CI machines; a developer without one gets a
failure naming the Debian package and the command that installs it.
"""

from __future__ import annotations

import shutil

import pytest


def require_binary(binary: str, package: str) -> str:
    """Path of ``binary``; fails the test with how to get it when it is missing."""
    found = shutil.which(binary)
    if not found:
        pytest.fail(
            f"{binary} is not installed: run `apt-get install {package}` "
            "(or `bash .ci/run`, which installs every system package the tests need)",
            pytrace=False,
        )
    return found
