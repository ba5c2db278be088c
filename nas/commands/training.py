"""What `nas train-supernet` and `nas retrain` do alike once their options are parsed: train, print the result
table, say what to run next."""
from __future__ import annotations

import os
import sys
from typing import Callable

from rich.console import Console

from nas.commands import hint
from nas.train import distributed
from nas.train.loop import TrainingDiverged


def run_training_command(train: Callable, config, prog: str, next_step: Callable[[object], str]) -> int:
    """Run `train(config, results=...)` for a command, its result table on stdout, then say on stderr what to run
    next (`next_step(result)`, on the main process): status 1 and one line when the loss diverged. The process group
    of a torchrun launch is always destroyed: gloo's threads left to the interpreter's exit can abort a rank."""
    try:
        result = train(config, results=Console())
    except TrainingDiverged as exc:
        print(f"{prog}: stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        distributed.teardown()
    if os.environ.get("RANK", "0") == "0":  # torchrun's other ranks stay quiet
        hint(next_step(result))
    return 0
