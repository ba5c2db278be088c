"""Start time of `nas --help` and the light commands (space, sample, flops) against `python -c pass`.

Each command is a fresh interpreter (`python -m nas ...`, what the console script runs). The commands are timed
side by side: every repetition runs all of them once, in a shuffled order, so a change in the machine's load hits
them alike; the table gives the median wall time of each, and its difference to `python -c pass`. The target
(issue 12) is a difference of at most 0.5 s.

    python scripts/bench_cli_start.py            # 15 repetitions
    python scripts/bench_cli_start.py --reps 30
"""
from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.5


def commands(tmp: Path) -> dict[str, list[str]]:
    arch = tmp / "arch_000.yaml"
    subprocess.run([sys.executable, "-m", "nas", "sample", "--space", "tiny-32", "--out", str(tmp)], check=True,
                   capture_output=True)
    return {"python -c pass": ["-c", "pass"],
            "nas --help": ["-m", "nas", "--help"],
            "nas space tiny-32": ["-m", "nas", "space", "tiny-32"],
            "nas sample --space tiny-32 -n 8": ["-m", "nas", "sample", "--space", "tiny-32", "-n", "8", "--out",
                                                str(tmp / "s")],
            "nas flops ARCH.yaml": ["-m", "nas", "flops", str(arch)]}


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="repetitions of every command (default %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        todo = commands(Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in todo}
        rng = random.Random(0)
        for name, argv in todo.items():  # warm the file cache once
            time_once(argv)
        for _ in range(args.reps):
            order = list(todo)
            rng.shuffle(order)
            for name in order:
                times[name].append(time_once(todo[name]))
    base = statistics.median(times["python -c pass"])
    print(f"median of {args.reps} interleaved runs each (seconds)")
    print(f"{'command':<34} {'median':>7} {'- pass':>7} {'min':>7} {'max':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<34} {median:7.3f} {median - base:+7.3f} {min(values):7.3f} {max(values):7.3f}")
    worst = max(statistics.median(v) for n, v in times.items() if n != "python -c pass") - base
    print(f"slowest command: {worst:+.3f} s over python -c pass (target <= +{TARGET_S} s): "
          f"{'met' if worst <= TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
