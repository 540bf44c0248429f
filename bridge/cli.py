"""The ``taskcast`` command: a thin click group.

Each command lives in its own module and is registered here with one line, so
several developers can add commands without touching each other's code.
"""

from __future__ import annotations

import click

from .demo import demo
from .serve import serve
from .terminal import COMMANDS


@click.group()
@click.version_option(package_name="taskcast")
def main() -> None:
    """taskcast: real-time progress streaming for Celery tasks."""


for _command in (serve, *COMMANDS, demo):
    main.add_command(_command)
