"""Progress of long work, on the console of notes (stderr), with an ETA.

On a terminal: rich bars, each with its ETA. Elsewhere (a log file, a pipe): a plain line at every tenth of the work
(`plain_steps`) and at least every `PLAIN_EVERY_S` seconds while it advances, such as
`epoch 3/40  step 120/1400  loss 1.234  eta 0:02:10`, written whole (never cut at the console's width) and
without carriage returns. The ETA assumes the pace of this process so far: the work done before it started (a
resumed run's steps) does not count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task
from rich.text import Text

PLAIN_EVERY_S = 30.0
UNKNOWN = "-:--:--"


def eta_text(elapsed: float, done: int, remaining: int | None) -> str:
    """'eta H:MM:SS' at the pace of `done` units in `elapsed` seconds (UNKNOWN before any unit is done); for work of
    unknown size (`remaining` None), the time elapsed."""
    if remaining is None:
        return f"elapsed {timedelta(seconds=round(elapsed))}"
    if remaining and (done <= 0 or elapsed <= 0):
        return f"eta {UNKNOWN}"
    return f"eta {timedelta(seconds=round(elapsed * remaining / done) if remaining else 0)}"


@dataclass
class _Task:
    total: int | None
    completed: int
    fields: dict
    started: float  # clock time of `add`
    start_completed: int  # done before this process started on it
    line_completed: int = -1  # at the last plain line
    line_time: float = 0.0

    def eta(self, now: float) -> str:
        remaining = None if self.total is None else self.total - self.completed
        return eta_text(now - self.started, self.completed - self.start_completed, remaining)


class ProgressBars:
    """Progress bars described by two functions of their fields: `label` (before the bar) and `detail` (after the
    count). `unit` names the count in plain lines ("step 120/1400"). `plain_steps`: plain lines at that many evenly
    spaced points of a task (and its end); 0: only every PLAIN_EVERY_S seconds (short, transient work)."""

    def __init__(self, console: Console, label: Callable[[dict], str], detail: Callable[[dict], str] = lambda f: "",
                 *, unit: str = "", plain_steps: int = 10, transient: bool = False, disable: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.console, self.label, self.detail, self.unit = console, label, detail, unit
        self.plain_steps, self.disable, self.clock = plain_steps, disable, clock
        self.plain = not console.is_terminal
        self.tasks: dict[int, _Task] = {}
        self.rich = None if self.plain or disable else Progress(
            _Text(lambda task: label(task.fields)), BarColumn(), MofNCompleteColumn(),
            _Text(lambda task: detail(task.fields)), _Text(self._eta_of),
            console=console, transient=transient)

    def _eta_of(self, task: Task) -> str:
        state = self.tasks.get(task.id)  # rich's refresh thread may draw a task before `add` records it
        return state.eta(self.clock()) if state is not None else ""

    def __enter__(self) -> ProgressBars:
        if self.rich is not None:
            self.rich.__enter__()
        return self

    def __exit__(self, *exc):
        if self.rich is not None:
            self.rich.__exit__(*exc)

    def add(self, total: int | None, completed: int = 0, **fields) -> int:
        task = self.rich.add_task("", total=total, completed=completed, **fields) if self.rich else len(self.tasks)
        self.tasks[task] = _Task(total, completed, fields, self.clock(), completed)
        return task

    def update(self, task: int, completed: int, **fields) -> None:
        state = self.tasks[task]
        state.completed = completed
        state.fields.update(fields)
        if self.rich is not None:
            self.rich.update(task, completed=completed, **fields)
        elif self.plain and not self.disable and self._line_due(state):
            self._write_line(state)

    def finished(self, task: int) -> bool:
        state = self.tasks[task]
        return state.total is not None and state.completed >= state.total

    def _line_due(self, state: _Task) -> bool:
        if state.completed == state.line_completed:
            return False
        since = self.clock() - (state.line_time if state.line_completed >= 0 else state.started)
        if since >= PLAIN_EVERY_S:
            return True
        if not self.plain_steps or not state.total:
            return False
        if state.completed >= state.total:
            return True

        def point(completed: int) -> int:  # which of the plain_steps points a count has passed
            return completed * self.plain_steps // state.total
        return point(state.completed) > point(max(state.line_completed, state.start_completed))

    def _write_line(self, state: _Task) -> None:
        now = self.clock()
        count = f"{state.completed}/{state.total}" if state.total is not None else str(state.completed)
        parts = [self.label(state.fields), f"{self.unit} {count}".strip(), self.detail(state.fields),
                 state.eta(now)]
        self.console.file.write("  ".join(p for p in parts if p) + "\n")  # not console.print: it folds at the width
        self.console.file.flush()
        state.line_completed, state.line_time = state.completed, now


class _Text(ProgressColumn):
    """A column of text made by a function of the task."""

    def __init__(self, render: Callable[[Task], str]):
        super().__init__()
        self._render = render

    def render(self, task: Task) -> Text:
        return Text(self._render(task))
