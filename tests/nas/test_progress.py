"""nas.progress: an ETA on every bar; off a terminal, whole plain lines at each tenth of the work (and every
PLAIN_EVERY_S seconds), never folded at the console's width nor made of carriage returns."""
import io

from rich.console import Console

from nas.progress import PLAIN_EVERY_S, ProgressBars, eta_text

LONG = "x" * 120  # longer than the 80 columns of a console that is not a terminal


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain_bars(clock: Clock, **options) -> tuple[ProgressBars, io.StringIO]:
    out = io.StringIO()
    bars = ProgressBars(Console(file=out), lambda f: f"epoch {f['epoch']}", lambda f: f"loss {f['loss']:.3f}  {LONG}",
                        unit="step", clock=clock, **options)
    return bars, out


def test_eta_follows_the_pace_of_this_process():
    assert eta_text(elapsed=10.0, done=5, remaining=15) == "eta 0:00:30"
    assert eta_text(elapsed=0.0, done=0, remaining=15) == "eta -:--:--"
    assert eta_text(elapsed=7.0, done=3, remaining=0) == "eta 0:00:00"
    assert eta_text(elapsed=65.0, done=3, remaining=None) == "elapsed 0:01:05"


def test_plain_lines_at_each_tenth_whole_and_with_an_eta():
    clock = Clock()
    bars, out = plain_bars(clock)
    with bars:
        task = bars.add(100, 40, epoch="1/4", loss=float("nan"))  # resumed at step 40: its pace counts from here
        for step in range(41, 101):
            clock.now += 2.0
            bars.update(task, step, epoch=f"{step // 25 + 1}/4", loss=1 / step)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert [line.split("  ")[1] for line in lines] == [f"step {s}/100" for s in range(50, 101, 10)]
    assert lines[0] == f"epoch 3/4  step 50/100  loss 0.020  {LONG}  eta 0:01:40"  # 10 steps in 20 s, 50 to go
    assert lines[-1].endswith("eta 0:00:00")


def test_slow_work_prints_a_line_every_interval_even_between_tenths():
    clock = Clock()
    bars, out = plain_bars(clock)
    with bars:
        task = bars.add(1000, epoch="1/1", loss=1.0)
        for step in range(1, 40):  # 3.9% of the work, slowly
            clock.now += PLAIN_EVERY_S / 2
            bars.update(task, step)
    assert len(out.getvalue().splitlines()) == 19  # one every two steps, i.e. every PLAIN_EVERY_S


def test_transient_work_prints_only_when_slow():
    clock = Clock()
    bars, out = plain_bars(clock, plain_steps=0)
    with bars:
        task = bars.add(10, epoch="-", loss=0.0)
        for step in range(1, 11):
            clock.now += 0.1
            bars.update(task, step)
    assert out.getvalue() == ""


def test_disabled_bars_print_nothing():
    clock = Clock()
    bars, out = plain_bars(clock, disable=True)
    with bars:
        task = bars.add(10, epoch="-", loss=0.0)
        for step in range(1, 11):
            clock.now += PLAIN_EVERY_S
            bars.update(task, step)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_rich_bar_with_an_eta():
    out = io.StringIO()
    clock = Clock()
    console = Console(file=out, force_terminal=True, width=200)
    bars = ProgressBars(console, lambda f: "gen 0", unit="candidates", clock=clock)
    with bars:
        task = bars.add(50)
        clock.now = 10.0
        bars.update(task, 10)
        bars.rich.refresh()
    assert "10/50" in out.getvalue() and "eta 0:00:40" in out.getvalue()
