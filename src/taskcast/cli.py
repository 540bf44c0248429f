"""The ``taskcast`` command: a thin click group.

Each command lives in its own module and is registered here with one line, so
several developers can add commands without touching each other's code.
"""

from __future__ import annotations

import click

from taskcast.bridge.serve import serve
from taskcast.demo.command import demo
from taskcast.terminal import COMMANDS
from taskcast.worker_config import ConfigError

EXIT_CONFIG = 2


class TaskcastGroup(click.Group):
    """Reports a bad setting, met by any command, in one line naming the variable."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"taskcast {ctx.invoked_subcommand}: {exc}", err=True)
            ctx.exit(EXIT_CONFIG)


@click.group(cls=TaskcastGroup)
@click.version_option(package_name="taskcast")
def main() -> None:
    """taskcast: real-time progress streaming for Celery tasks."""


for _command in (serve, *COMMANDS, demo):
    main.add_command(_command)
