"""Subcommands of the `nas` CLI, one module each (registered in `nas.cli.COMMANDS`).

Results (tables, JSON) go to stdout; progress, notes and the next-step hint to stderr, so that `nas ... --json`
pipes into a parser and `nas ... > result.txt` keeps only the result."""
import argparse
import dataclasses
import sys
from contextlib import contextmanager

from search_spaces import builtin_spaces

SPACE_HELP = f"search space: a built-in name ({', '.join(builtin_spaces())}) or a space YAML file"


_HINTS = {"on": True}


def hint(command: str) -> None:
    """Say what to run next, on stderr (unless a caller that chains the commands turned hints off)."""
    if _HINTS["on"]:
        print(f"next: {command}", file=sys.stderr)


@contextmanager
def hints_off():
    """No next-step hints inside the block: `nas pipeline` runs the next step itself, so a stage's hint (with
    the stage's own paths) would mislead."""
    previous, _HINTS["on"] = _HINTS["on"], False
    try:
        yield
    finally:
        _HINTS["on"] = previous


def config_from_args(config_class: type, args: argparse.Namespace):
    """The command's config dataclass from its parsed options: the options the user left unset (None) keep the
    dataclass's defaults."""
    names = {field.name for field in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in vars(args).items() if k in names and v is not None})
