"""Ctrl-C and SIGTERM as one exception that long-running work catches to save what it has.

`nas.cli.main` installs the handlers; a command that can save its state catches `Stopped`, saves, sets its
`note` (what was saved and how to resume) and re-raises; `main` prints one line and exits 128 + the signal
number (130 for SIGINT, 143 for SIGTERM), without a traceback.
"""
from __future__ import annotations

import signal


class Stopped(BaseException):
    """A SIGINT or SIGTERM arrived. A BaseException, like KeyboardInterrupt, so `except Exception` lets it pass."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.note = ""  # e.g. "checkpoint of step 120 saved; resume with: nas train-supernet --out runs/x --resume"

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def stop_on_signals() -> None:
    """Turn SIGINT and SIGTERM into `Stopped` in this (main) thread."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stopped)
