"""Subcommands of the `nas` CLI, one module each (registered in `nas.cli.COMMANDS`)."""
from search_spaces import builtin_spaces

SPACE_HELP = f"search space: a built-in name ({', '.join(builtin_spaces())}) or a space YAML file"
