"""Faults during `nas export` and `nas eval`: a kill -9 between the files of an export, Ctrl-C and SIGTERM. The
export folder is always a complete export (the old one or the new one), never a mix, and nothing half-written
stays visible.

Each fault is injected in a child process at an exact point: right after the n-th call of a function (every file
and folder of an export is made durable with `os.fsync`, so "after the n-th fsync" is a point between two writes),
the child sends itself the signal. No timing is involved."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from nas.cli import main
from nas.export.exported_model import read_exported, write_exported
from nas.train.config import TrainConfig
from nas.train.supernet import train_supernet
from search_spaces import load_space

HANG_GUARD_S = 600  # only guards against a hung child; no test depends on how long anything takes

# Runs `nas ARGV...` after wrapping TARGET ("module:attribute[.attribute]") so that its N-th call, once it has
# returned, sends the process signal SIGNUM.
CHILD = """
import importlib, os, sys
from nas.cli import main
target, nth, signum, *argv = sys.argv[1:]
module, _, attribute = target.partition(":")
owner = importlib.import_module(module)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
real, calls = getattr(owner, name), []
def hooked(*args, **kwargs):
    result = real(*args, **kwargs)
    calls.append(1)
    if len(calls) == int(nth):
        os.kill(os.getpid(), int(signum))
    return result
setattr(owner, name, hooked)
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny-32 checkpoint after two SPOS steps, an arch of it, and a complete export ("new") made without any
    fault; "old" is an export of the same arch with other weights (what `--force` replaces)."""
    tmp = tmp_path_factory.mktemp("faults")
    cfg = TrainConfig(space="tiny-32", epochs=1, batch_size=16, stop_after=2, eval_random=0, out=str(tmp / "run"),
                      device="cpu", holdout=0)
    train_supernet(cfg, console=Console(file=io.StringIO()))
    arch_file = tmp / "arch.yaml"
    load_space("tiny-32").sample(np.random.default_rng(3)).save(arch_file)
    argv = ["export", "--supernet", str(tmp / "run" / "checkpoint.pt"), "--arch", str(arch_file), "--holdout", "50",
            "--batch-size", "50", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp / "new")]) == 0
    exported = read_exported(tmp / "new")
    with torch.no_grad():
        for tensor in exported.model.state_dict().values():
            tensor.add_(1)
    write_exported(tmp / "old", exported.model, {**exported.meta, "inherited_top1": 0.0})
    return argv, tmp / "old", tmp / "new"


def _state(folder: Path) -> tuple:
    """What an export folder holds, apart from the time it was written."""
    meta = json.loads((folder / "meta.json").read_text())
    meta.pop("created")
    return sorted(p.name for p in folder.iterdir()), (folder / "arch.yaml").read_bytes(), \
        (folder / "model.safetensors").read_bytes(), meta


def _run_child(target: str, nth: int, signum: int, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", CHILD, target, str(nth), str(signum), *argv], env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# An export makes 5 fsyncs: its 3 files, its folder, then the parent folder once the new folder is in place. Killed
# after each of them.
@pytest.mark.parametrize("kill_after", [1, 2, 3, 4, 5])
def test_a_killed_export_force_leaves_the_old_or_the_new_export_never_a_mix(trained, tmp_path, capsys, kill_after):
    argv, old, new = trained
    out = tmp_path / "e"
    shutil.copytree(old, out)
    child = _run_child("os:fsync", kill_after, signal.SIGKILL, [*argv, "--out", str(out), "--force"])
    assert child.returncode == -signal.SIGKILL, f"the export made fewer than {kill_after} fsyncs: {child.stderr}"
    assert _state(out) in (_state(old), _state(new)), "the folder mixes files of two exports"
    assert main(["eval", str(out), "--device", "cpu", "--json"]) == 0
    capsys.readouterr()
    assert len(_hidden(tmp_path)) <= 1  # at most the temp folder of the killed export
    assert main([*argv, "--out", str(out), "--force"]) == 0  # the next export removes it
    assert _state(out) == _state(new) and _hidden(tmp_path) == []


@pytest.mark.parametrize("signum, target, nth, outcome", [
    (signal.SIGINT, "nas.search.fitness:Fitness.__call__", 1, "old"),  # once the subnet is measured, before any write
    (signal.SIGTERM, "os:fsync", 3, "old"),  # its 3 files are in the temp folder, which is not yet in place
    (signal.SIGINT, "os:fsync", 5, "new"),  # the new folder is in place
])
def test_a_stopped_export_exits_with_one_line_and_leaves_no_partial_folder(trained, tmp_path, signum, target, nth,
                                                                          outcome):
    argv, old, new = trained
    out = tmp_path / "e"
    shutil.copytree(old, out)
    child = _run_child(target, nth, signum, [*argv, "--out", str(out), "--force"])
    assert child.returncode == 128 + signum and child.stdout == "", child.stderr
    assert "Traceback" not in child.stderr and len(child.stderr.strip().splitlines()) == 1, child.stderr
    note = (f"nothing was written ({str(out)!r} is as it was); rerun the same command to export" if outcome == "old"
            else f"the new export was complete before the stop: {str(out)!r} holds it")
    assert child.stderr.strip() == f"nas export: stopped by {signal.Signals(signum).name}; {note}"
    assert _state(out) == _state(old if outcome == "old" else new) and _hidden(tmp_path) == []


def test_a_stopped_eval_exits_with_one_line(trained):
    _, _, new = trained
    child = _run_child("nas.export.measure:top1", 1, signal.SIGTERM, ["eval", str(new), "--device", "cpu"])
    assert child.returncode == 143 and child.stdout == "", child.stderr
    assert child.stderr.strip() == ("nas eval: stopped by SIGTERM; nothing was written (nas eval only reads the "
                                    "folder); rerun the same command to measure")
