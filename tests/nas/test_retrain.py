"""`nas retrain`: the export folder it writes, --init starts from the export's weights, resume = uninterrupted run,
DDP = one process, documented errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from nas.train.checkpoint import load_checkpoint
from nas.cli import main
from nas.cost_model import arch_cost
from nas.data.datasets import load_datasets
from nas.data.loaders import make_loader
from nas.data.source import parse_data
from nas.train.accuracy import top1
from nas.export.exported_model import read_exported, write_exported
from nas.train.retrain import retrain
from nas.train.config import RetrainConfig
from search_spaces import load_arch
from supernets.nas_vit import NasViT

# A small tiny-32 arch that still has every kind of cell and both attentions (0.61M MACs).
ARCH = """\
space: tiny-32
stages:
- {pool: 2, dim: 16, paths: 1, cells: [shared], attn: mhsa, mlp_ratio: 4.0}
- {pool: 2, dim: 32, paths: 2, cells: [layer], attn: bra, topk: 4, regions: 2, mlp_ratio: 4.0}
- {pool: 2, dim: 48, paths: 1, cells: [shared, skip], attn: mhsa, mlp_ratio: 2.0}
- {pool: 2, dim: 96, paths: 2, cells: [skip]}
"""
# 1 epoch of the digits at batch 64 = 22 steps; checkpoints every 4 steps
SMALL = dict(epochs=1, batch_size=64, save_every=4, log_every=4, seed=3)


@pytest.fixture
def arch_file(tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text(ARCH)
    return path


def _export(folder, arch_text: str, num_classes: int = 10, seed: int = 11):
    """An export folder holding random (seeded) weights of the arch, as `nas export` lays it out."""
    arch_path = folder.parent / f"{folder.name}.yaml"
    arch_path.write_text(arch_text)
    arch, space = load_arch(arch_path)
    torch.manual_seed(seed)
    model = NasViT(arch, space, num_classes)
    write_exported(folder, model, {"num_classes": num_classes, "arch_hash": arch.hash})
    return model


@pytest.fixture
def init_folder(tmp_path):
    folder = tmp_path / "export"
    _export(folder, ARCH)
    return folder


def _state(out) -> dict:
    return load_checkpoint(out / "checkpoint.pt")


def test_retrain_from_scratch_writes_an_export_folder_that_loads(tmp_path, arch_file, monkeypatch):
    out = tmp_path / "run"
    renamed, replace = [], os.replace  # the names that atomic writes rename into place
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(os.path.basename(dst)), replace(src, dst))[1])
    result = retrain(RetrainConfig(arch=str(arch_file), out=str(out), **SMALL))
    assert "final_eval.json" in renamed and "config.yaml" in renamed
    assert (result.step, result.finished) == (22, True)
    exported = read_exported(out / "model")
    arch, space = load_arch(arch_file)
    assert exported.arch == arch and exported.space.hash == space.hash
    trained = _state(out)["model"]
    weights = exported.model.state_dict()
    assert weights.keys() == trained.keys() and all(torch.equal(weights[k], trained[k]) for k in weights)
    meta = exported.meta
    assert (meta["num_classes"], meta["arch_hash"], meta["space_hash"]) == (10, arch.hash, space.hash)
    assert (meta["macs"], meta["params"]) == arch_cost(arch, space, 10)
    assert meta["retrained"]["init"] is None and meta["measured"]["split"] == "val"
    digits = load_datasets(parse_data("digits"), space.img_size)
    cfg = meta["pretrained_cfg"]  # timm's, with the data's normalisation
    assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (digits.preprocessing["mean"], digits.preprocessing["std"])
    assert (cfg["input_size"], cfg["classifier"], cfg["num_classes"]) == ([3, 32, 32], "head.fc", 10)
    # the val top-1 it reports is the exported model's
    val = digits.val
    assert meta["val_top1"] == result.top1 == top1(exported.model, make_loader(val, 64, train=False),
                                                   torch.device("cpu"))
    assert 0 <= result.top1 <= 1
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["arch"], config["init"], config["epochs"]) == (str(arch_file), None, 1)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and yaml.safe_load(lines[-1])["macs"] == [meta["macs"]]


def test_init_starts_from_exactly_the_exported_weights(tmp_path, init_folder, monkeypatch):
    seen = []
    forward = NasViT.forward

    def recording(self, x):
        if self.training and not seen:
            seen.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        return forward(self, x)

    monkeypatch.setattr(NasViT, "forward", recording)
    out = tmp_path / "run"
    retrain(RetrainConfig(init=str(init_folder), out=str(out), stop_after=1, **SMALL))  # no --arch: INIT/arch.yaml
    exported = read_exported(init_folder).model.state_dict()
    assert seen[0].keys() == exported.keys()
    assert all(torch.equal(seen[0][k], exported[k]) for k in exported), "step 0 did not start from the export"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["arch"], config["init"]) == (str(init_folder / "arch.yaml"), str(init_folder))
    moved = _state(out)["model"]
    assert any(not torch.equal(moved[k], exported[k]) for k in exported)  # and the step trained it


def test_drop_path_changes_the_training_and_is_recorded(tmp_path, arch_file):
    plain = retrain(RetrainConfig(arch=str(arch_file), out=str(tmp_path / "plain"), stop_after=3, **SMALL))
    dropped = retrain(RetrainConfig(arch=str(arch_file), out=str(tmp_path / "dropped"), stop_after=3, drop_path=0.3,
                                    **SMALL))
    assert plain.step == dropped.step == 3
    a, b = _state(tmp_path / "plain")["model"], _state(tmp_path / "dropped")["model"]
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # same init, other branches dropped
    assert yaml.safe_load((tmp_path / "dropped" / "config.yaml").read_text())["drop_path"] == 0.3


def test_resumed_retrain_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, arch_file, init_folder):
    options = dict(arch=str(arch_file), init=str(init_folder), ema=0.9, **SMALL)
    whole = retrain(RetrainConfig(out=str(tmp_path / "whole"), **options))
    first = retrain(RetrainConfig(out=str(tmp_path / "split"), stop_after=9, **options))
    assert (first.step, first.finished, first.model) == (9, False, None)
    assert not (tmp_path / "split" / "model").exists()
    second = retrain(RetrainConfig(out=str(tmp_path / "split"), resume=True, **options))
    assert second.finished and second.step == whole.step == 22
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "split")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f"resumed {key} differs"
    shipped = read_exported(tmp_path / "split" / "model").model.state_dict()
    assert all(torch.equal(shipped[k], a["ema"][k]) for k in shipped)  # the EMA is what is shipped
    assert whole.top1 == second.top1


def test_two_process_gloo_ddp_equals_one_process_with_the_same_global_batch(tmp_path, tiny32_ln):
    arch_file = tmp_path / "arch_ln.yaml"  # the arch in tiny-32's LayerNorm twin (see the fixture)
    arch_file.write_text(ARCH.replace("space: tiny-32", f"space: {tiny32_ln}"))
    single = retrain(RetrainConfig(arch=str(arch_file), out=str(tmp_path / "one"), stop_after=3, **SMALL))
    options = {**SMALL, "batch_size": SMALL["batch_size"] // 2, "stop_after": 3}  # the same global batch
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nas",
               "retrain", "--device=cpu", f"--arch={arch_file}", f"--out={tmp_path / 'ddp'}", *flags]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp, one = _state(tmp_path / "ddp"), _state(tmp_path / "one")
    assert ddp["step"] == single.step == 3
    # The all-reduce sums in another order: float noise (see test_train_supernet). The key biases are left out:
    # softmax ignores a shift shared by all keys, so their gradient is rounding noise (1e-9), and Adam's
    # normalisation turns that noise into steps of the order of the lr, different in each summation order.
    keys = [k for k in one["model"] if not k.endswith(".attn.k.bias")]
    assert len(keys) < len(one["model"])
    for key in keys:
        torch.testing.assert_close(ddp["model"][key], one["model"][key], atol=1e-5, rtol=0, msg=lambda m: f"{key}: {m}")


def test_cli_errors_exit_2_with_one_line(tmp_path, arch_file, init_folder, capsys):
    other = tmp_path / "other"
    _export(other, ARCH.replace("mlp_ratio: 2.0", "mlp_ratio: 4.0"))
    three = tmp_path / "three"
    _export(three, ARCH, num_classes=3)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "arch.yaml").write_text(ARCH)
    cases = [
        ([], "give --arch ARCH.yaml"),
        (["--arch", str(tmp_path / "missing.yaml")], "--arch: cannot read arch file"),
        (["--init", str(tmp_path / "missing")], "--init: export folder"),
        (["--init", str(tmp_path / "broken")], "has no model.safetensors"),
        (["--arch", str(arch_file), "--init", str(other)], "--init"),
        (["--init", str(three)], "classifies 3 classes, but --data 'digits' has 10"),
        (["--arch", str(arch_file), "--holdout", "-1"], "--holdout must be >= 0, got -1"),
        (["--arch", str(arch_file), "--holdout", "1437"], "--holdout 1437: expected fewer than the 1437 images"),
        (["--arch", str(arch_file), "--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--arch", str(arch_file), "--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
        (["--arch", str(arch_file), "--resume"], "--resume"),
        (["--arch", str(arch_file), "--data", "mnist"], "--data 'mnist': expected one of"),
    ]
    for extra, message in cases:
        status = main(["retrain", "--out", str(tmp_path / "run"), *extra])
        err = capsys.readouterr().err
        assert status == 2 and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
    arch, _ = load_arch(arch_file)
    assert f"holds arch {read_exported(other).arch.hash}, not the arch {arch.hash}" in \
        (main(["retrain", "--arch", str(arch_file), "--init", str(other)]), capsys.readouterr().err)[1]


def test_resume_checks_the_arch_and_a_nan_loss_stops_with_status_1(tmp_path, arch_file, init_folder, capsys,
                                                                   monkeypatch):
    out = tmp_path / "run"
    assert main(["retrain", "--arch", str(arch_file), "--out", str(out), "--stop-after", "2", "--batch-size", "64", "--save-every", "4",
                 "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["retrain", "--arch", str(arch_file), "--out", str(out)]) == 2  # would overwrite the run
    assert "pass --resume" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text(ARCH.replace("mlp_ratio: 2.0", "mlp_ratio: 4.0"))
    assert main(["retrain", "--out", str(out), "--resume", "--arch", str(other)]) == 2
    assert "not the arch" in capsys.readouterr().err
    assert main(["train-supernet", "--out", str(out), "--resume"]) == 2
    assert "is not the config of a run of this command" in capsys.readouterr().err

    forward, calls = NasViT.forward, {"n": 0}

    def poisoned(self, x):
        calls["n"] += self.training
        return forward(self, x) * (float("nan") if self.training and calls["n"] > 3 else 1.0)

    monkeypatch.setattr(NasViT, "forward", poisoned)
    status = main(["retrain", "--out", str(out), "--resume"])  # the run's own options, to the end
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err[-1].startswith("nas retrain: stopped: the loss became nan at step 5 (model ")
    assert _state(out)["step"] == 4
