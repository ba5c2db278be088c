"""Faults of a training run: Ctrl-C and SIGTERM checkpoint the last step and say how to resume; a kill -9 after a
checkpoint; a damaged config.yaml; stale temp files. Each resumed run is the uninterrupted one, bit for bit, and logs
each step once. Checkpoints by time."""
from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nas.train.loop
from nas.train.checkpoint import load_checkpoint
from nas.cli import main
from nas.cost_model import extreme_arch
from nas.train.config import TrainConfig
from nas.train.supernet import train_supernet
from nas.train.loop import signals_deferred
from search_spaces import load_space
from tests.conftest import TINY16

HANG = 600  # seconds: only a guard against a hung child; nothing is decided by time
# 3 epochs of the digits at batch 64 = 66 steps, so a child is stopped long before its end; the children and this
# process train with the same thread count, which the figures depend on
OPTIONS = ["--epochs", "3", "--batch-size", "64", "--log-every", "3", "--seed", "3", "--holdout", "0", "--threads", "1"]


def _start(*args: str) -> subprocess.Popen:
    """`nas ARGS` in a child process, as a user starts it."""
    return subprocess.Popen([sys.executable, "-m", "nas", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _logged_steps(metrics: Path) -> list[int]:
    """The steps of the complete lines of a metrics.jsonl (a line being written is left out)."""
    text = metrics.read_text() if metrics.exists() else ""
    return [json.loads(line)["step"] for line in text.split("\n")[:-1]]


def _wait_for_step(metrics: Path, child: subprocess.Popen, step: int) -> None:
    """Wait until the child has logged `step` (or a later one)."""
    deadline = time.monotonic() + HANG
    while not any(s >= step for s in _logged_steps(metrics)):
        if child.poll() is not None:
            pytest.fail(f"the child ended (status {child.returncode}) before logging step {step}: "
                        f"{child.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"hang guard: no step {step} in {metrics} after {HANG} s")
        time.sleep(0.05)


def _stop(child: subprocess.Popen, signum: int) -> str:
    child.send_signal(signum)
    try:
        _, err = child.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail(f"hang guard: the child did not end within {HANG} s of {signal.Signals(signum).name}")
    return err


def _assert_same_run(a: Path, b: Path) -> None:
    """The same weights (model, EMA), optimizer moments and step, and the same metrics.jsonl but for the speed."""
    one, two = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert one["step"] == two["step"]
    for key in ("model", "ema"):
        assert (one[key] is None) == (two[key] is None)
        for name, tensor in (one[key] or {}).items():
            assert torch.equal(tensor, two[key][name]), f"{key} {name} differs"
    moments = [(one["optimizer"]["state"][i], two["optimizer"]["state"][i]) for i in one["optimizer"]["state"]]
    assert all(torch.equal(x[k], y[k]) for x, y in moments for k in x)

    def lines(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
                for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines(a) == lines(b)


def _stop_and_resume(tmp_path: Path, command: list[str], signum: int) -> int:
    """Stop a child `nas COMMAND` with `signum` after its step 4, check its last line, resume it in this process
    for 4 more steps and train the same run uninterrupted to that step; returns the step the stop saved."""
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    child = _start(*command, "--out", str(stopped))
    _wait_for_step(stopped / "metrics.jsonl", child, 4)
    err = _stop(child, signum)
    assert child.returncode == 128 + signum and "Traceback" not in err, err[-3000:]
    name = signal.Signals(signum).name
    line = re.fullmatch(rf"nas {command[0]}: stopped by {name}; checkpoint of step (\d+) saved; resume with: (.+)",
                        err.strip().splitlines()[-1])
    assert line, err[-3000:]
    step = int(line[1])
    assert load_checkpoint(stopped / "checkpoint.pt")["step"] == step >= 4
    assert _logged_steps(stopped / "metrics.jsonl") == list(range(3, step + 1, 3))
    resume = shlex.split(line[2])
    assert resume == ["nas", command[0], "--out", str(stopped), "--resume"]
    assert main([*resume[1:], "--stop-after", "4"]) == 0
    assert main([*command, "--out", str(whole), "--stop-after", str(step + 4)]) == 0
    _assert_same_run(stopped, whole)
    return step


def test_ctrl_c_checkpoints_the_last_step_and_the_resumed_run_is_the_uninterrupted_one(tmp_path):
    _stop_and_resume(tmp_path, ["train-supernet", "--space", TINY16, *OPTIONS, "--eval-random", "0"], signal.SIGINT)


def test_sigterm_of_a_retrain_checkpoints_the_last_step_and_resumes_identically(tmp_path):
    arch = tmp_path / "arch.yaml"
    extreme_arch(load_space("tiny-32"), largest=False).save(arch)
    _stop_and_resume(tmp_path, ["retrain", "--arch", str(arch), "--ema", "0.9", *OPTIONS], signal.SIGTERM)


def test_a_signal_inside_a_deferred_block_waits_for_its_end():
    received = []

    def handler(signum, frame):
        received.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            assert received == []
        assert received == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("minutes, saved", [(2.5, [3, 6, 7]), (0, [7])])
def test_checkpoints_every_save_minutes_of_the_clock(tmp_path, monkeypatch, minutes, saved):
    steps = []
    save = nas.train.loop.save_checkpoint

    def recording(state, path):
        steps.append(state["step"])
        save(state, path)

    monkeypatch.setattr(nas.train.loop, "save_checkpoint", recording)
    clock = itertools.count(0.0, 60.0).__next__  # one minute later at every reading: one reading per step
    cfg = TrainConfig(out=str(tmp_path), epochs=1, batch_size=64, save_every=100, save_minutes=minutes, stop_after=7,
                      holdout=0)
    train_supernet(cfg, clock=clock)
    assert steps == saved


def test_a_kill_after_a_checkpoint_resumes_with_each_step_logged_once(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = ["train-supernet", "--space", TINY16, *OPTIONS, "--log-every", "1", "--save-every", "4",
               "--save-minutes", "0", "--eval-random", "0"]
    child = _start(*command, "--out", str(killed))
    metrics, target = killed / "metrics.jsonl", 6
    while True:  # freeze the child where it has logged 2 or 3 steps after its last checkpoint, then kill it
        _wait_for_step(metrics, child, target)
        child.send_signal(signal.SIGSTOP)
        last = _logged_steps(metrics)[-1]
        if last % 4 >= 2:
            break
        child.send_signal(signal.SIGCONT)
        target = last + 1
    child.kill()
    child.communicate(timeout=HANG)
    saved = last - last % 4
    assert load_checkpoint(killed / "checkpoint.pt")["step"] == saved
    stale = killed / ".checkpoint.pt.k1ll3d.tmp"  # what a kill during a checkpoint's write leaves
    stale.write_bytes(b"half a checkpoint")
    config = (killed / "config.yaml").stat()

    assert main(["train-supernet", "--out", str(killed), "--resume", "--stop-after", str(last + 2 - saved)]) == 0
    assert main([*command, "--out", str(whole), "--stop-after", str(last + 2)]) == 0
    assert _logged_steps(metrics) == list(range(1, last + 3))
    _assert_same_run(killed, whole)
    assert not stale.exists()
    after = (killed / "config.yaml").stat()
    assert (after.st_ino, after.st_mtime_ns) == (config.st_ino, config.st_mtime_ns), "a resume rewrote config.yaml"


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run of 2 steps with options of its own (lr, save-every), to resume."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert main(["train-supernet", "--out", str(out), "--epochs", "1", "--batch-size", "64", "--holdout", "0",
                 "--lr", "5e-4", "--save-every", "7", "--stop-after", "2"]) == 0
    return out


@pytest.mark.parametrize("damage", [None, "", "{[ not: yaml", "- a list\n"],
                         ids=["missing", "empty", "not-yaml", "list"])
def test_resume_reads_the_checkpoints_options_when_config_yaml_is_damaged(stopped_run, tmp_path, damage):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    written = (out / "config.yaml").read_text().replace(str(stopped_run), str(out))  # as if it had run here
    if damage is None:
        (out / "config.yaml").unlink()
    else:
        (out / "config.yaml").write_text(damage)
    assert main(["train-supernet", "--out", str(out), "--resume", "--stop-after", "1"]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and (state["config"]["lr"], state["config"]["save_every"]) == (5e-4, 7)
    assert (out / "config.yaml").read_text() == written  # restored


def test_a_damaged_config_yaml_and_checkpoint_are_one_line(stopped_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    (out / "config.yaml").write_text("")
    (out / "checkpoint.pt").write_bytes(b"torn")
    assert main(["train-supernet", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: '{out / 'config.yaml'}' is empty, and the copy of the options in the checkpoint cannot " \
           f"be read: checkpoint '{out / 'checkpoint.pt'}' is corrupt" in err
    assert len(err.strip().splitlines()) == 1
