"""The exit codes of the ``taskcast`` command: one table, the README's (under "Watching").

Scripts chain on these codes, so every command takes them from here, and every
failure a user can act on travels as a :class:`Failure` (its code and the one
line that says what failed and what to do) to the one place that prints it and
exits (``taskcast.cli``). Pure: importing it loads nothing else.
"""

from __future__ import annotations

from enum import IntEnum

from taskcast.protocol import FORBIDDEN, NOT_FOUND, UNAUTHORIZED, UNAVAILABLE


class ExitCode(IntEnum):
    """What a ``taskcast`` command's exit status means."""

    OK = 0
    FAILED = 1  # the operation failed, was revoked or lost; or the bridge refused the command
    USAGE = 2  # a bad flag, argument or setting
    UNREACHABLE = 3  # the bridge, the Celery broker or the event store does not answer
    NOT_FOUND = 4  # no such operation, or no worker has the task
    ACCESS = 5  # a token is needed, refused, expired, or lacks the scope
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


# A bridge's error reply (PROTOCOL.md "Errors") as an exit code; other codes are FAILED.
BY_ERROR_CODE = {
    NOT_FOUND: ExitCode.NOT_FOUND,
    UNAUTHORIZED: ExitCode.ACCESS,
    FORBIDDEN: ExitCode.ACCESS,
    UNAVAILABLE: ExitCode.UNREACHABLE,
}


class Failure(Exception):
    """A command failed in a way the user can act on: its exit code and its one line."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
