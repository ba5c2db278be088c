"""Ctrl-C and SIGTERM as one exception that long-running work catches to save what it has.

`nas.cli.main` installs the handlers; a command that can save its state catches `Stopped`, saves, sets its
`note` (what was saved and how to resume) and re-raises; `main` prints one line and exits 128 + the signal
number (130 for SIGINT, 143 for SIGTERM), without a traceback.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


def stop_on_signals() -> dict:
    """Turn SIGINT and SIGTERM into `Stopped` in this (main) thread; returns the handlers they had."""
    return {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}


def set_handlers(handlers: dict) -> None:
    """Give the signals of `handlers` those handlers (e.g. what `stop_on_signals` returned, or SIG_IGN)."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def restore_default_signals(*_) -> None:
    """In a child process (a DataLoader worker): the parent handles stops; the child keeps Python's defaults,
    which torch's worker loop expects (it ignores a KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def signals_deferred(deliver: bool = True):
    """Hold SIGINT and SIGTERM until the block ends, then deliver the first to the handler it had (`deliver`; not
    when the block raises, nor for the save that follows a stop: that run is ending anyway). In the main thread
    only (where Python runs signal handlers); elsewhere a plain block. So a step, or the save after a stop, is never
    cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    handlers = {signum: signal.signal(signum, lambda signum, frame: held.append(signum)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if held and deliver:
        signal.raise_signal(held[0])
