"""The ``taskcast`` command: a thin click group.

Each command lives in its own module and is registered here with one line, so
several developers can add commands without touching each other's code. The
group is also the one place where a command's failure becomes its single line
on stderr and its exit code (:mod:`taskcast.exits`): no traceback reaches a user.
"""

from __future__ import annotations

from typing import NoReturn

import click

from taskcast.bridge.serve import serve
from taskcast.demo.command import demo
from taskcast.exits import ExitCode, Failure
from taskcast.terminal import COMMANDS
from taskcast.worker_config import ConfigError


def stop(ctx: click.Context, failure: Failure) -> NoReturn:
    """Print ``failure`` as one line naming the command (``taskcast watch: ...``), and exit
    with its code."""
    name = " ".join(filter(None, ("taskcast", ctx.invoked_subcommand)))
    click.echo(f"{name}: {failure.message}", err=True)
    raise click.exceptions.Exit(failure.code)


def usage_failure(exc: click.UsageError) -> Failure:
    """Click's usage error in one line (it prints four), pointing at the command's help."""
    path = exc.ctx.command_path if exc.ctx is not None else "taskcast"
    return Failure(ExitCode.USAGE, f"{exc.format_message().rstrip('.')} (see '{path} --help')")


class TaskcastGroup(click.Group):
    """Runs a command and turns what stopped it into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            stop(ctx, usage_failure(exc))
        except ConfigError as exc:
            stop(ctx, Failure(ExitCode.USAGE, str(exc)))
        except Failure as exc:
            stop(ctx, exc)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None


@click.group(cls=TaskcastGroup)
@click.version_option(package_name="taskcast")
def main() -> None:
    """taskcast: real-time progress streaming for Celery tasks."""


for _command in (serve, *COMMANDS, demo):
    main.add_command(_command)
