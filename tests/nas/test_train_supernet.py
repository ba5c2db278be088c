"""`nas train-supernet`: resume = uninterrupted run, the thread count recorded, DDP = one process, documented
errors."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from nas.train.checkpoint import load_checkpoint
from nas.cli import main
from nas.train.arch_samplers import build_sampler
from nas.train.config import RetrainConfig, TrainConfig
from nas.train.supernet import TrainingDiverged, train_supernet
from search_spaces import load_space
from tests.conftest import TINY16
from supernets.supernet import Supernet

# 1 epoch of the digits at batch 64 = 22 steps; checkpoints every 4 steps
SMALL = dict(epochs=1, batch_size=64, save_every=4, log_every=4, eval_random=0, seed=3, lr=1e-3, holdout=0)


def _weights(out) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["model"]


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, monkeypatch):
    renamed, replace = [], os.replace  # the names that atomic writes rename into place
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(os.path.basename(dst)), replace(src, dst))[1])
    small = {**SMALL, "space": TINY16}  # the property does not depend on the model's size
    whole = train_supernet(TrainConfig(out=str(tmp_path / "whole"), **small))
    assert "final_eval.json" in renamed and "config.yaml" in renamed
    first = train_supernet(TrainConfig(out=str(tmp_path / "split"), stop_after=9, **small))
    assert (first.step, first.finished) == (9, False)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 9
    second = train_supernet(TrainConfig(out=str(tmp_path / "split"), resume=True, **small))
    assert second.finished and second.step == whole.step == 22
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert [r["top1"] for r in whole.table] == [r["top1"] for r in second.table]


def test_the_thread_count_is_recorded_and_a_resume_uses_it(tmp_path, monkeypatch):
    seen, forward = [], Supernet.forward  # torch's thread count at each training forward

    def recording(self, x, arch=None):
        seen.append(torch.get_num_threads())
        return forward(self, x, arch)

    monkeypatch.setattr(Supernet, "forward", recording)
    options = ["--epochs", "1", "--batch-size", "64", "--holdout", "0", "--stop-after", "1"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["train-supernet", "--out", str(tmp_path / "one"), "--threads", "1", *options]) == 0
        assert main(["train-supernet", "--out", str(tmp_path / "one"), "--resume", "--stop-after", "1"]) == 0
        assert seen == [1, 1] and torch.get_num_threads() == 2  # and this process's count is restored
        assert main(["train-supernet", "--out", str(tmp_path / "default"), *options]) == 0  # --threads 0
        assert seen == [1, 1, 2]
        for run, threads in (("one", 1), ("default", 2)):
            assert yaml.safe_load((tmp_path / run / "config.yaml").read_text())["threads"] == threads
    finally:
        torch.set_num_threads(before)


def _torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    """2 CPU processes (gloo) under torchrun, as a user runs them."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_process_gloo_ddp_equals_one_process_with_the_same_global_batch(tmp_path, tiny32_ln):
    # 3 steps: the all-reduce sums in another order, and Adam's normalisation amplifies that float noise
    # step by step (measured: 2e-7 after 1 step, 1.5e-6 after 3, 1e-4 after 22), not a systematic difference
    single = train_supernet(TrainConfig(out=str(tmp_path / "one"), space=str(tiny32_ln), stop_after=3, **SMALL))
    options = {**SMALL, "batch_size": SMALL["batch_size"] // 2, "stop_after": 3,  # the same global batch
               "space": tiny32_ln}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    _torchrun("-m", "nas", "train-supernet", "--device=cpu", f"--out={tmp_path / 'ddp'}", *flags, cwd=tmp_path)
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ddp["step"] == single.step == 3
    a = _weights(tmp_path / "one")
    for key in a:
        torch.testing.assert_close(ddp["model"][key], a[key], atol=1e-5, rtol=0, msg=lambda m: f"{key}: {m}")


def test_every_rank_samples_the_same_arch(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(
        "import torch.distributed as dist\n"
        "from nas.train.distributed import setup, teardown\n"
        "from nas.train.arch_samplers import build_sampler\n"
        "from search_spaces import load_space\n"
        "setup('cpu')\n"
        "space = load_space('tiny-32')\n"
        "for name in ('uniform', 'flops-uniform', 'sandwich'):\n"
        "    sampler = build_sampler(name, space, 11)\n"
        "    mine = [a.hash for step in range(40) for a in sampler.archs(step)]\n"
        "    everyone = [None, None]\n"
        "    dist.all_gather_object(everyone, mine)\n"
        "    assert everyone[0] == everyone[1], name\n"
        "    assert len(set(mine)) > 10, name\n"
        "print('same archs on rank', dist.get_rank())\n"
        "teardown()\n")  # leaving gloo's threads to interpreter exit can abort a rank ('terminate called ...')
    done = _torchrun(str(script), cwd=tmp_path)
    assert done.stdout.count("same archs on rank") == 2


def test_samplers_are_functions_of_seed_and_step():
    space = load_space("tiny-32")
    for name in ("uniform", "flops-uniform", "sandwich"):
        one, two = build_sampler(name, space, 5), build_sampler(name, space, 5)
        assert [a.hash for s in (3, 10, 3) for a in one.archs(s)] == [a.hash for s in (3, 10, 3) for a in two.archs(s)]
        assert all(space.contains(a) for a in one.archs(7))
    assert len(build_sampler("sandwich", space, 0).archs(0)) == 3


def test_flops_uniform_spreads_over_the_cost_range():
    """Every MAC bin gets its share (1/8 of the draws each, within 4 standard deviations), and the costly end of
    the space (uniform sampling's top decile of MACs) is drawn at least 1.5 times as often as under uniform gene
    sampling (1.9x on tiny-32 today; uniform's own share is 0.10 +- 0.015 over 400 draws)."""
    from nas.cost_model import arch_cost

    space = load_space("tiny-32")
    uniform, spread = build_sampler("uniform", space, 1), build_sampler("flops-uniform", space, 1)
    draws = 400
    uniform_macs = np.array([arch_cost(a, space)[0] for s in range(draws) for a in uniform.archs(s)])
    spread_macs = np.array([arch_cost(a, space)[0] for s in range(draws) for a in spread.archs(s)])
    counts = np.bincount(np.digitize(np.log(spread_macs), spread.edges[1:-1]), minlength=len(spread.edges) - 1)
    share, sd = draws / len(counts), np.sqrt(draws / len(counts) * (1 - 1 / len(counts)))
    assert (np.abs(counts - share) < 4 * sd).all(), counts
    top_decile = np.quantile(uniform_macs, 0.9)
    assert (spread_macs > top_decile).mean() > 1.5 * (uniform_macs > top_decile).mean()  # 0.10 +- 0.015 uniform


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    forward = Supernet.forward
    calls = {"n": 0}

    def poisoned(self, x, arch=None):
        calls["n"] += self.training
        out = forward(self, x, arch)
        return out * float("nan") if self.training and calls["n"] > 6 else out

    monkeypatch.setattr(Supernet, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at step 6 .*last good checkpoint"):
        train_supernet(TrainConfig(out=str(tmp_path), **SMALL))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_holdout_images_are_never_trained_on(tmp_path, monkeypatch):
    import nas.train.loop
    from nas.data.splits import fitness_split

    trained = []  # train-set indices of every batch a loader of the run serves
    make_loader = nas.train.loop.make_loader

    def recording(dataset, *args, **kwargs):
        loader = make_loader(dataset, *args, **kwargs)
        trained.extend(dataset.indices[i] for batch in loader.batch_sampler for i in batch)
        return loader

    monkeypatch.setattr(nas.train.loop, "make_loader", recording)
    result = train_supernet(TrainConfig(out=str(tmp_path), stop_after=1, **{**SMALL, "holdout": 300}))
    space = load_space("tiny-32")
    rest, held = fitness_split("digits", 300, space, 10)  # what nas evolve and nas export rank subnets on
    assert len(trained) == (1437 - 300) // 64 * 64  # one epoch's batches: 17 steps, not 22
    assert not set(trained) & set(held.indices) and set(trained) <= set(rest.indices)
    assert result.step == 1 and load_checkpoint(tmp_path / "checkpoint.pt")["config"]["holdout"] == 300
    assert "holdout: 300" in (tmp_path / "config.yaml").read_text()


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    cases = [
        (["--data", "cifar10:/nonexistent"], "--data 'cifar10:/nonexistent'"),
        (["--data", "mnist"], "--data 'mnist': expected one of"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--resume"], "--resume"),
        (["--holdout", "-5"], "--holdout must be >= 0, got -5"),
        (["--holdout", "1437"], "--holdout 1437: expected fewer than the 1437 images of the train set of 'digits'"),
        (["--holdout", "1400", "--batch-size", "64"], "--batch-size 64: larger than the train set (37 images"),
    ]
    for extra, message in cases:
        status = main(["train-supernet", "--out", str(tmp_path / "run"), *extra])
        err = capsys.readouterr().err
        assert status == 2 and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1


# What each numeric option of the training commands allows, with a value outside it (a float option is also never
# NaN or infinite).
NUMERIC_OPTIONS = {
    "epochs": ("0", ">= 1"), "batch_size": ("0", ">= 1"), "save_every": ("0", ">= 1"), "log_every": ("0", ">= 1"),
    "stop_after": ("-1", ">= 0"), "workers": ("-1", ">= 0"), "holdout": ("-1", ">= 0"), "train_subset": ("-1", ">= 0"),
    "threads": ("-1", ">= 0"), "seed": ("-1", "in [0, 4294967296)"), "eval_random": ("-1", ">= 0"),
    "lr": ("0", "a finite number > 0"), "weight_decay": ("-0.1", "a finite number >= 0"),
    "warmup_epochs": ("-1", "a finite number >= 0"), "min_lr": ("-1e-5", "a finite number >= 0"),
    "mixup": ("-0.5", "a finite number >= 0"), "cutmix": ("-1", "a finite number >= 0"),
    "clip_grad": ("-1", "a finite number >= 0"), "save_minutes": ("-1", "a finite number >= 0"),
    "label_smoothing": ("1", "a finite number in [0, 1)"),
    "ema": ("1", "a finite number in [0, 1) (the decay of the EMA; 0 = off)"),
    "warmup_largest": ("41", "a finite number in [0, --epochs 40]"),
    "drop_path": ("1", "a finite number in [0, 1)"),
}


def _bad_values(kind) -> list:
    cases = []
    for field in dataclasses.fields(kind):
        if field.type in ("int", "float"):
            value, allowed = NUMERIC_OPTIONS[field.name]
            cases += [(kind, field.name, v, allowed) for v in [value] + ["nan", "inf"] * (field.type == "float")]
    return cases


@pytest.mark.parametrize("kind, name, value, allowed", _bad_values(TrainConfig) + _bad_values(RetrainConfig))
def test_every_numeric_option_names_itself_and_what_it_allows(tmp_path, capsys, kind, name, value, allowed):
    command = ["train-supernet"] if kind is TrainConfig else ["retrain", "--arch", str(tmp_path / "arch.yaml")]
    flag = f"--{name.replace('_', '-')}"
    assert main([*command, "--out", str(tmp_path / "run"), f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    shown = value if kind.__dataclass_fields__[name].type == "int" else str(float(value))
    assert f"error: {flag} must be {allowed}, got {shown}" in err and len(err.strip().splitlines()) == 1, err


def test_mismatched_and_corrupt_checkpoints_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "run"
    train_supernet(TrainConfig(out=str(out), stop_after=2, **{**SMALL, "space": TINY16}))
    assert main(["train-supernet", "--out", str(out), "--resume", "--space", "unified-224"]) == 2
    assert "was trained on space 'tiny-16', not on 'unified-224'" in capsys.readouterr().err
    assert main(["train-supernet", "--out", str(out)]) == 2  # would overwrite the run
    assert "pass --resume" in capsys.readouterr().err
    # the CLI resume takes the run's saved options, but not its --stop-after: it runs to the end
    assert main(["train-supernet", "--out", str(out), "--resume"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 22
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["train-supernet", "--out", str(out), "--resume"]) == 2
    assert "is corrupt or not a checkpoint" in capsys.readouterr().err
