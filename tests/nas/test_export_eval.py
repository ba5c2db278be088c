"""`nas export` and `nas eval`: the inherited top-1 is measured on evolution's held-out split and reproduced by the
standalone model; the folder loads through timm; meta.json is right; user mistakes are one error line."""
import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from rich.console import Console
from safetensors import safe_open

import nas.export.measure
from nas.cli import main
from nas.cost_model import arch_cost
from nas.data.datasets import load_datasets
from nas.data.loaders import make_loader
from nas.data.source import parse_data
from nas.data.splits import default_holdout, fitness_split
from nas.export.exported_model import read_exported
from nas.export.measure import load_measurement_data
from nas.train.accuracy import recalibrate_batchnorm, top1
from nas.train.config import TrainConfig
from nas.train.supernet import train_supernet
from nas.train.trained_supernet import load_trained_supernet
from search_spaces import load_arch, load_space
from supernets.elastic_ops import ElasticBatchNorm2d

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are tiny: one intra-op thread is as fast, and avoids the many-fold slowdown of oversubscribed
    OpenMP threads when other processes (pytest-xdist workers) share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(tmp: Path, space: str) -> Path:
    """A real train-supernet checkpoint after two SPOS steps on digits."""
    cfg = TrainConfig(space=space, epochs=1, batch_size=16, stop_after=2, eval_random=0, out=str(tmp), device="cpu",
                      holdout=0)
    train_supernet(cfg, console=Console(file=io.StringIO()))
    return tmp / "checkpoint.pt"


def _sample_arch(space_ref: str, seed: int, path: Path) -> Path:
    """A random arch; seed 3 of tiny-32 is a small one (2.2M MACs) with mhsa and bra stages, quick to measure."""
    load_space(space_ref).sample(np.random.default_rng(seed)).save(path)
    return path


def _cli_json(*argv: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--json"]) == 0
    return json.loads(out.getvalue())  # stdout holds nothing but the JSON


@pytest.fixture(scope="module")
def ln(tmp_path_factory):
    """A checkpoint of tiny-32's LayerNorm twin (no BatchNorm recalibration), an arch, and its export measured on
    200 held-out images at batch 64."""
    tmp = tmp_path_factory.mktemp("ln")
    space_file = _space_variant(tmp, "ln")
    checkpoint = _train(tmp / "run", space_file)
    arch_file = _sample_arch(space_file, 3, tmp / "arch.yaml")
    out = tmp / "export"
    meta = _cli_json("export", "--supernet", str(checkpoint), "--arch", str(arch_file), "--out", str(out),
                     "--holdout", "200", "--batch-size", "64", "--device", "cpu")
    return checkpoint, arch_file, out, meta


@pytest.fixture(scope="module")
def bn_checkpoint(tmp_path_factory):
    """A checkpoint of tiny-32 with BatchNorm in its convolutions (a space YAML path)."""
    tmp = tmp_path_factory.mktemp("bn")
    space_file = _space_variant(tmp, "bn")
    return _train(tmp / "run", space_file), space_file


def _space_variant(folder: Path, conv_norm: str) -> str:
    """tiny-32 with `conv_norm` in its convolutions, as a space YAML path."""
    text = load_space("tiny-32").to_dict()
    text.update(name=f"tiny-32-{conv_norm}", conv_norm=conv_norm)
    space_file = folder / f"tiny-32-{conv_norm}.yaml"
    space_file.write_text(yaml.safe_dump(text))
    return str(space_file)


def run_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


# ---------------------------------------------------------------------------------------------------- export

def test_inherited_top1_is_the_subnets_top1_on_evolutions_held_out_split(ln):
    checkpoint, arch_file, _, meta = ln
    trained = load_trained_supernet(checkpoint)
    arch, _ = load_arch(arch_file)
    _, held = fitness_split("digits", 200, trained.space, trained.num_classes)
    expected = top1(trained.supernet, make_loader(held, 64, train=False), CPU, arch)
    assert meta["inherited_top1"] == expected
    assert meta["measured"] == {"data": "digits", "split": "holdout", "holdout": 200, "images": 200,
                                "batch_size": 64, "device": "cpu", "bn_recalibration": None, "trained_on": True,
                                "holdout_seed": 0, "holdout_from": "--holdout"}


def test_eval_reproduces_the_inherited_top1_exactly(ln, capsys):
    _, _, out, meta = ln
    result = _cli_json("eval", str(out), "--device", "cpu")
    assert (result["split"], result["holdout"], result["images"], result["batch_size"]) == ("holdout", 200, 200, 64)
    assert result["top1"] == meta["inherited_top1"] and result["difference"] == 0.0
    assert main(["eval", str(out), "--device", "cpu"]) == 0  # the table shows both and the difference
    table = capsys.readouterr().out
    assert f"{100 * meta['inherited_top1']:.2f}%" in table and "+0.00" in table and "reproduced exactly" in table


def test_eval_on_the_val_split_measures_the_val_set(ln):
    _, _, out, meta = ln
    result = _cli_json("eval", str(out), "--split", "val", "--device", "cpu")
    val = load_datasets(parse_data("digits"), 32).val
    expected = top1(read_exported(out).model, make_loader(val, 64, train=False), CPU)
    assert (result["images"], result["holdout"], result["top1"]) == (len(val), None, expected)
    assert result["difference"] is None and result["inherited_top1"] == meta["inherited_top1"]


def test_export_format_onnx_writes_a_model_onnxruntime_runs_as_pytorch_does(ln, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the 'deploy' and 'dev' extras")
    checkpoint, arch_file, _, _ = ln
    out = tmp_path / "deployed"
    meta = _cli_json("export", "--supernet", str(checkpoint), "--arch", str(arch_file), "--out", str(out),
                     "--holdout", "200", "--batch-size", "64", "--device", "cpu", "--format", "onnx")
    assert meta["formats"]["onnx"]["file"] == "model.onnx" and meta["formats"]["onnx"]["max_abs_difference"] <= 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["arch.yaml", "meta.json", "model.onnx", "model.safetensors"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(2))  # a batch size never exported with
    with torch.no_grad():
        expected = read_exported(out).model(x)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_exported_weights_load_through_timm_and_match_the_subnet(ln):
    checkpoint, arch_file, out, meta = ln
    trained = load_trained_supernet(checkpoint)
    arch, _ = load_arch(arch_file)
    model = timm.create_model("nas_vit", arch=str(out / "arch.yaml"), num_classes=meta["num_classes"],
                              checkpoint_path=str(out / "model.safetensors")).eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained.supernet(x, arch)
        assert torch.equal(model(x), expected)
        assert torch.equal(read_exported(out).model(x), expected)
        pretrained = timm.create_model("nas_vit", pretrained=True, arch=str(out / "arch.yaml")).eval()
        assert torch.equal(pretrained(x), expected)  # pretrained=True loads the export folder's own weights


def test_meta_records_space_checkpoint_arch_and_cost(ln):
    checkpoint, arch_file, out, meta = ln
    arch, space = load_arch(arch_file)
    model = read_exported(out).model
    macs, params = arch_cost(arch, space, 10)
    assert (meta["space"], meta["space_hash"], meta["arch_hash"]) == ("tiny-32-ln", space.hash, arch.hash)
    assert (meta["macs"], meta["params"]) == (macs, params)
    digits = load_datasets(parse_data("digits"), space.img_size).preprocessing  # the run's data
    assert (tuple(meta["pretrained_cfg"]["mean"]), tuple(meta["pretrained_cfg"]["std"])) == (digits["mean"],
                                                                                              digits["std"])
    loaded = timm.create_model("nas_vit", pretrained=True, arch=str(out / "arch.yaml"))
    assert timm.data.resolve_data_config(model=loaded)["mean"] == digits["mean"]  # timm preprocesses as we did
    assert params == sum(p.numel() for p in model.parameters())
    assert (meta["num_classes"], meta["img_size"]) == (10, 32)
    assert meta["checkpoint"] == str(checkpoint.resolve()) and meta["checkpoint_weights"] == "model"
    assert meta["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert load_arch(out / "arch.yaml")[0] == arch
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata()["arch_hash"] == arch.hash
    assert meta["weights_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert {**json.loads((out / "meta.json").read_text()), "out": str(out)} == meta  # --json prints meta.json


def test_eval_and_timm_refuse_weights_with_a_flipped_byte(ln, tmp_path, capsys):
    _, _, out, meta = ln
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01  # the last byte of the last tensor: the file still loads, with another weight
    (damaged / "model.safetensors").write_bytes(weights)
    line = run_error(capsys, "eval", str(damaged), "--device", "cpu")
    assert str(damaged / "model.safetensors") in line and "the weights do not match meta.json" in line
    with pytest.raises(ValueError, match="the weights do not match meta.json"):
        timm.create_model("nas_vit", arch=str(damaged / "arch.yaml"), num_classes=meta["num_classes"],
                          checkpoint_path=str(damaged / "model.safetensors"))


def test_held_out_images_are_those_of_the_fitness_split():
    space = load_space("tiny-32")
    sets = load_measurement_data("digits", "holdout", 300, space, 10)
    rest, held = fitness_split("digits", 300, space, 10)
    assert sets.images.indices == held.indices and sets.rest.indices == rest.indices
    assert len(set(held.indices) | set(rest.indices)) == 1437


def test_batchnorm_space_recalibrates_with_defaults_from_the_checkpoint(bn_checkpoint, tmp_path):
    checkpoint, space_file = bn_checkpoint
    arch_file = _sample_arch(space_file, 3, tmp_path / "arch.yaml")
    meta = _cli_json("export", "--supernet", str(checkpoint), "--arch", str(arch_file), "--out",
                     str(tmp_path / "e"), "--device", "cpu")
    trained = load_trained_supernet(checkpoint)
    measured = meta["measured"]
    assert measured["data"] == trained.config["data"] == "digits"
    assert measured["holdout"] == measured["images"] == default_holdout(trained.config) == 1000
    recalibration = measured["bn_recalibration"]
    assert recalibration == {"batches": 1, "batch_size": 250, "images": 250}  # 437 images are not held out

    arch, _ = load_arch(arch_file)
    before = trained.supernet.export(arch).state_dict()
    rest, held = fitness_split("digits", 1000, trained.space, 10)
    recalibrate_batchnorm(trained.supernet, arch, make_loader(rest, 250, train=True), CPU, 20)
    assert meta["inherited_top1"] == top1(trained.supernet, make_loader(held, 250, train=False), CPU, arch)
    exported = read_exported(tmp_path / "e").model.state_dict()
    after = trained.supernet.export(arch).state_dict()
    stats = [k for k in exported if k.endswith(("running_mean", "running_var"))]
    assert stats and any(isinstance(m, ElasticBatchNorm2d) for m in trained.supernet.modules())
    assert all(torch.equal(exported[k], after[k]) for k in stats)  # the export holds the recalibrated statistics
    assert not all(torch.equal(exported[k], before[k]) for k in stats)  # which differ from the trained ones

    result = _cli_json("eval", str(tmp_path / "e"), "--device", "cpu")
    assert result["top1"] == meta["inherited_top1"] and result["difference"] == 0.0


# ---------------------------------------------------------------------------------------------------- errors

def test_export_refuses_to_overwrite_without_force(ln, tmp_path, capsys):
    checkpoint, arch_file, _, _ = ln
    out = tmp_path / "e"
    argv = ["export", "--supernet", str(checkpoint), "--arch", str(arch_file), "--out", str(out), "--holdout", "50",
            "--device", "cpu"]
    assert main(argv) == 0
    capsys.readouterr()
    first = (out / "meta.json").read_text()
    line = run_error(capsys, *argv)
    assert "already holds an export" in line and "--force" in line
    assert (out / "meta.json").read_text() == first
    assert main([*argv[:-4], "--holdout", "60", "--force", "--device", "cpu"]) == 0
    assert json.loads((out / "meta.json").read_text())["measured"]["holdout"] == 60


def test_export_errors_name_the_problem(ln, tmp_path, capsys):
    checkpoint, arch_file, _, _ = ln
    base = ["export", "--supernet", str(checkpoint), "--arch", str(arch_file), "--out", str(tmp_path / "e"),
            "--device", "cpu"]

    def error(*changes: str) -> str:
        argv = list(base)
        for option, value in zip(changes[::2], changes[1::2]):
            if option in argv:
                argv[argv.index(option) + 1] = value
            else:
                argv += [option, value]
        return run_error(capsys, *argv)

    missing = str(tmp_path / "none.pt")
    assert f"checkpoint {missing!r} does not exist" in error("--supernet", missing)
    assert "cannot read arch file" in error("--arch", str(tmp_path / "none.yaml"))
    other = _sample_arch("unified-224", 0, tmp_path / "other.yaml")
    line = error("--arch", str(other))
    assert str(other) in line and "unified-224" in line and "tiny-32" in line
    genes = yaml.safe_load(arch_file.read_text())
    genes["stages"][0]["dim"] = 128
    outside = tmp_path / "outside.yaml"
    outside.write_text(yaml.safe_dump(genes))
    line = error("--arch", str(outside))
    assert str(outside) in line and "dim" in line and "128" in line
    assert "--holdout 0" in error("--holdout", "0")
    assert "--holdout 5000: expected an int in [1, 1436]" in error("--holdout", "5000")
    assert "--batch-size 0" in error("--batch-size", "0")
    for option in ("--holdout", "--batch-size"):
        assert f"{option} -1: expected an int >= 1" in error(option, "-1")
        for value in ("nan", "inf", "1.5"):
            assert f"argument {option}: invalid int value: '{value}'" in error(option, value)
    assert "--space 'unified-224'" in error("--space", "unified-224")
    assert "--data 'imagefolder:" in error("--data", f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "file").write_text("")
    assert "is a file" in error("--out", str(tmp_path / "file"))
    assert f"{str(tmp_path / 'file')!r} is a file" in error("--out", str(tmp_path / "file" / "e"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("")  # the export replaces the whole folder: refused, not deleted
    line = error("--out", str(tmp_path / "notes"))
    assert "todo.txt" in line and "not an export's" in line
    assert (tmp_path / "notes" / "todo.txt").exists()
    assert not (tmp_path / "e").exists()  # no error leaves a partial export


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot make anything in: mode 0555, or for root (whom modes do not stop) immutable."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if _can_write_in(folder):
        immutable = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)]).returncode == 0
        if not immutable or _can_write_in(folder):
            pytest.skip("no way to make a read-only folder here (root without chattr +i)")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def _can_write_in(folder: Path) -> bool:
    try:
        (folder / "probe").mkdir()
    except OSError:
        return False
    (folder / "probe").rmdir()
    return True


def test_export_to_a_read_only_folder_fails_before_loading_anything(ln, read_only_folder, tmp_path, capsys):
    _, arch_file, _, _ = ln
    out = read_only_folder / "e"
    missing = tmp_path / "none.pt"  # --out is checked first: not this checkpoint
    line = run_error(capsys, "export", "--supernet", str(missing), "--arch", str(arch_file), "--out", str(out))
    assert line.startswith(f"nas export: error: --out {str(out)!r}: cannot write in {str(read_only_folder)!r} ("), line
    assert line.endswith(("(Permission denied)", "(Operation not permitted)")), line  # EACCES, or EPERM (immutable)


def test_export_files_have_the_permissions_of_plain_files(ln):
    _, _, out, _ = ln
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for name in ("arch.yaml", "model.safetensors", "meta.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name  # 0644 under umask 022


def test_eval_errors_name_the_problem(ln, tmp_path, capsys):
    _, _, out, _ = ln
    missing = tmp_path / "none"
    assert f"export folder {str(missing)!r} does not exist" in run_error(capsys, "eval", str(missing))
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("arch.yaml", "meta.json"):
        shutil.copy(out / name, partial / name)
    assert "has no model.safetensors" in run_error(capsys, "eval", str(partial))
    assert "--holdout 0" in run_error(capsys, "eval", str(out), "--holdout", "0")
    for option in ("--holdout", "--batch-size"):
        assert f"{option} -1: expected an int >= 1" in run_error(capsys, "eval", str(out), option, "-1")
        for value in ("nan", "inf"):
            assert f"argument {option}: invalid int value: '{value}'" in run_error(capsys, "eval", str(out), option,
                                                                                   value)
    assert "--holdout 5000" in run_error(capsys, "eval", str(out), "--holdout", "5000")
    assert "applies to --split holdout only" in run_error(capsys, "eval", str(out), "--split", "val",
                                                          "--holdout", "10")
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    meta = json.loads((mixed / "meta.json").read_text())
    meta["arch_hash"] = "0" * 16
    (mixed / "meta.json").write_text(json.dumps(meta))
    assert "mixed" in run_error(capsys, "eval", str(mixed))
    meta["arch_hash"] = read_exported(out).arch.hash
    meta["measured"]["data"] = f"cifar10:{tmp_path / 'moved'}"
    (mixed / "meta.json").write_text(json.dumps(meta))
    line = run_error(capsys, "eval", str(mixed))
    assert "moved" in line and "meta.json" in line and "pass --data" in line


@pytest.mark.parametrize("same_checkpoint", [True, False])
def test_export_measures_the_images_of_the_search_that_found_the_arch(ln, tmp_path, same_checkpoint):
    """An arch beside a search.json of this checkpoint is measured on the search's held-out images (its size, not
    the run's default of 1,000); a search.json of another checkpoint is ignored."""
    checkpoint, arch_file, _, _ = ln
    search = tmp_path / "search"
    search.mkdir()
    shutil.copy(arch_file, search / "best.yaml")
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest() if same_checkpoint else "0" * 64
    (search / "search.json").write_text(json.dumps({"checkpoint_sha256": sha256, "holdout": 150, "data": "digits"}))
    meta = _cli_json("export", "--supernet", str(checkpoint), "--arch", str(search / "best.yaml"), "--out",
                     str(tmp_path / "export"), "--batch-size", "64", "--device", "cpu", "--threads", "1")
    measured = meta["measured"]
    if same_checkpoint:
        assert (measured["holdout"], measured["images"], measured["holdout_seed"]) == (150, 150, 0)
        assert measured["holdout_from"] == f"the search's ({search / 'search.json'})"
    else:
        assert (measured["holdout"], measured["holdout_from"]) == (default_holdout({}), "the default")
    assert _cli_json("eval", str(tmp_path / "export"), "--device", "cpu")["images"] == measured["images"]


def test_threads_is_the_torch_thread_count_while_measuring_and_restored_after(ln, monkeypatch):
    _, _, out, _ = ln
    seen = []

    def counting_top1(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return top1(*args, **kwargs)

    monkeypatch.setattr(nas.export.measure, "top1", counting_top1)
    assert torch.get_num_threads() == 1  # the module's fixture
    _cli_json("eval", str(out), "--device", "cpu", "--threads", "2")
    assert seen == [2] and torch.get_num_threads() == 1
