"""The `nas` command line: one subcommand per module of `nas.commands`.

A command module exposes `add_parser(subparsers)`, which adds its parser, sets `func(args)` and returns it.
`func` raises ValueError (or OSError) for user mistakes; `main` turns them into one error line and
exit status 2, as argparse does for bad options. Ctrl-C and SIGTERM raise `nas.interrupts.Stopped`; a command
saves what it can and says how to resume, and `main` exits 130 / 143 without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from nas.interrupts import STOP_SIGNALS, Stopped, set_handlers, stop_on_signals

# Registering a new command = adding its module name here (in the order `nas --help` lists them).
COMMANDS = ("space", "sample", "flops", "train-supernet", "evolve", "export", "eval", "retrain")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `nas <command>: error: ...`, like the commands' own."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)  # keeps examples' lines
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> Parser:
    parser = Parser(prog="nas", description="Neural architecture search for vision transformers.",
                    epilog="Run 'nas COMMAND --help' for the options and an example of each command.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS:
        command = importlib.import_module(f"nas.commands.{name.replace('-', '_')}").add_parser(subparsers)
        command.set_defaults(prog=command.prog)  # names the command in its error lines
    return parser


def main(argv: list[str] | None = None) -> int:
    previous = stop_on_signals()  # first: building the parser imports optuna and takes seconds
    prog = "nas"
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and usage errors: return the status instead of exiting the caller
            return exc.code
        prog = args.prog
        return args.func(args) or 0
    except Stopped as stop:
        print(f"{prog}: stopped by {stop}" + (f"; {stop.note}" if stop.note else ""), file=sys.stderr)
        return stop.exit_status
    except OSError as exc:
        return _fail(prog, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except ValueError as exc:
        return _fail(prog, str(exc))
    finally:
        # As the program (no argv): the result is complete, so a stop during interpreter shutdown is ignored rather
        # than raised inside a finalizer (a traceback after the work). Called in-process: the caller's handlers.
        set_handlers({signum: signal.SIG_IGN for signum in STOP_SIGNALS} if argv is None else previous)


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)  # one line even for YAML errors
    return 2
