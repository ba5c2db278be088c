"""The `nas` command line: one subcommand per module of `nas.commands`.

A command module exposes `add_parser(subparsers)`, which adds its parser, sets `func(args)` and returns it.
`func` raises ValueError (or OSError) for user mistakes; `main` turns them into one error line and
exit status 2, as argparse does for bad options. Ctrl-C and SIGTERM raise `nas.interrupts.Stopped`; a command
saves what it can and says how to resume, and `main` exits 130 / 143 without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from nas.interrupts import STOP_SIGNALS, Stopped, set_handlers, stop_on_signals

# Registering a new command = adding its module name here (in the order `nas --help` lists them).
COMMANDS = ("pipeline", "space", "sample", "flops", "train-supernet", "evolve", "export", "eval", "retrain", "show")


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
        status = args.func(args) or 0
        sys.stdout.flush()  # here, not at exit: a reader that has gone is handled below
        return status
    except BrokenPipeError:
        # The reader of stdout has gone (`nas space tiny-32 | head -1`): status 1, as Python's documentation
        # recommends and as rich's tables do (below), since the output was cut short; no traceback, and no
        # 141 (SIGPIPE's), which only a program killed by the signal has. Results go to stdout once the work is
        # saved, so nothing else is lost. stdout is pointed at /dev/null so that Python's flush at exit does not
        # print "Exception ignored ... BrokenPipeError".
        _silence_stdout()
        return 1
    except SystemExit as exc:  # rich's Console on a broken pipe does the same (Console.on_broken_pipe) and exits
        return exc.code if isinstance(exc.code, int) else 1
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


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # in-process with a stdout of the caller's that has no file
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)  # one line even for YAML errors
    return 2
