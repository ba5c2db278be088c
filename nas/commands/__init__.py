"""Subcommands of the `nas` CLI, one module each (registered in `nas.cli.COMMANDS`).

Results (tables, JSON) go to stdout; progress, notes and the next-step hint to stderr, so that `nas ... --json`
pipes into a parser and `nas ... > result.txt` keeps only the result."""
import sys

from search_spaces import builtin_spaces

SPACE_HELP = f"search space: a built-in name ({', '.join(builtin_spaces())}) or a space YAML file"


def hint(command: str) -> None:
    """Say what to run next, on stderr."""
    print(f"next: {command}", file=sys.stderr)
