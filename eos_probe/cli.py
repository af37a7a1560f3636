"""The `eos-probe` command line: a click group whose verbs live in `eos_probe.commands.*`.

Verbs are imported lazily so that `eos-probe --help` and cheap verbs (bands, inspect) do not pay
for importing torch.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from .errors import EosProbeError

#: verb -> "module:attribute" of its click command
COMMANDS = {
    "train": "eos_probe.commands.train:command",
    "plot": "eos_probe.commands.plot:command",
    "inspect": "eos_probe.commands.inspect:command",
    "bands": "eos_probe.commands.bands:command",
    "bench": "eos_probe.commands.bench:command",
    "data": "eos_probe.commands.data:command",
    "sweep": "eos_probe.commands.sweep:command",
    "sweep-summary": "eos_probe.commands.sweep:summary_command",
    "edge": "eos_probe.commands.edge:command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if _available(name))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _available(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


def _available(name: str) -> bool:
    module = COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eos-probe")
def cli() -> None:
    """Hessian diagnostics and edge-of-stability analysis of zeroth-order optimization."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes end in one line on stderr and a non-zero exit, never a traceback."""
    try:
        rv = cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as e:  # bad flag, missing argument, bad choice
        msg = e.format_message().replace("\n", " ")
        click.echo(f"error: {msg}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code if e.exit_code else 2)
    except EosProbeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
