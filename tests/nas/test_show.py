"""`nas show RUN_DIR` on the folders of a small real run (train-supernet, stopped and finished; evolve; export),
on a folder of runs and on folders that are not runs; and the streams of those commands: results on stdout, the
next step on stderr."""
import json
from pathlib import Path

import pytest
import torch

from nas.cli import main

TRAIN = ["--epochs", "1", "--batch-size", "64", "--train-subset", "128", "--holdout", "100", "--eval-random", "0",
         "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(capsys, *argv: str) -> tuple[str, str]:
    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def show(capsys, folder: Path) -> dict:
    out, _ = run(capsys, "show", str(folder), "--json")
    return json.loads(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """runs/supernet (finished), runs/stopped (1 step of 4), runs/search (finished), runs/model (an export)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train-supernet", "--out", str(root / "supernet"), *TRAIN]) == 0
    assert main(["train-supernet", "--out", str(root / "stopped"), *TRAIN, "--epochs", "2", "--stop-after", "1"]) == 0
    assert main(["evolve", "--supernet", str(root / "supernet" / "checkpoint.pt"), "--flops", "8M", "--population",
                 "2", "--generations", "1", "--out", str(root / "search"), "--device", "cpu", "--threads", "1"]) == 0
    assert main(["export", "--supernet", str(root / "supernet" / "checkpoint.pt"), "--arch",
                 str(root / "search" / "best.yaml"), "--out", str(root / "model"), "--device", "cpu"]) == 0
    return root


def test_train_supernet_prints_its_table_on_stdout_with_chance_and_the_next_step_on_stderr(tmp_path, capsys):
    out, err = run(capsys, "train-supernet", "--out", str(tmp_path), *TRAIN)
    assert "inherited val top-1 of subnets" in out and "chance level: 10.00% (10 classes)" in out
    assert "inherited val top-1" not in err
    assert err.splitlines()[-1] == f"next: nas evolve --supernet {tmp_path / 'checkpoint.pt'} --flops 16M"


def test_a_stopped_training_run(runs, capsys):
    summary = show(capsys, runs / "stopped")
    assert (summary["kind"], summary["complete"]) == ("supernet", False)
    assert summary["progress"] == {"steps": 1, "total_steps": 4, "epoch": 1, "epochs": 2}
    assert summary["next"] == f"nas train-supernet --out {runs / 'stopped'} --resume"
    out, err = run(capsys, "show", str(runs / "stopped"))
    assert "not complete" in out and "1 of 4 (epoch 1 of 2)" in out
    assert err == f"next: nas train-supernet --out {runs / 'stopped'} --resume\n"


def test_a_finished_training_run(runs, capsys):
    summary = show(capsys, runs / "supernet")
    final = json.loads((runs / "supernet" / "final_eval.json").read_text())
    assert (summary["kind"], summary["complete"], summary["progress"]["steps"]) == ("supernet", True, 2)
    assert {name: figures["top1"] for name, figures in summary["best"].items()} == {r["subnet"]: r["top1"]
                                                                                   for r in final}
    assert summary["next"] == f"nas evolve --supernet {runs / 'supernet' / 'checkpoint.pt'} --flops 16M"  # as train


def test_a_finished_search(runs, capsys):
    summary = show(capsys, runs / "search")
    search = json.loads((runs / "search" / "search.json").read_text())
    assert (summary["kind"], summary["complete"]) == ("search", True)
    assert summary["progress"]["evaluated"] == summary["progress"]["planned"] == 2
    assert summary["best"]["arch"] == search["best"]["arch"] and summary["holdout"] == 100
    text, _ = run(capsys, "show", str(runs / "search"))
    assert f"loss {search['best']['loss']:.4f} (ranked by --fitness loss)" in text
    assert summary["next"] == (f"nas export --supernet {runs / 'supernet' / 'checkpoint.pt'} --arch "
                               f"{runs / 'search' / 'best.yaml'} --out {runs / 'search' / 'model'}")


def test_an_export_measured_on_the_search_images(runs, capsys):
    summary = show(capsys, runs / "model")
    meta = json.loads((runs / "model" / "meta.json").read_text())
    assert (summary["kind"], summary["complete"], summary["from"]) == ("export", True, "supernet")
    assert summary["best"]["inherited top-1"]["top1"] == meta["inherited_top1"]
    assert meta["measured"]["holdout"] == 100 and "search.json" in meta["measured"]["holdout_from"]
    assert summary["next"] == f"nas eval {runs / 'model'}"


def test_a_folder_of_runs_lists_each(runs, capsys):
    summary = show(capsys, runs)
    assert summary["kind"] == "folder of runs" and summary["complete"] is False  # the stopped run
    assert [(Path(r["folder"]).name, r["kind"]) for r in summary["runs"]] == [
        ("model", "export"), ("search", "search"), ("stopped", "supernet"), ("supernet", "supernet")]
    _, err = run(capsys, "show", str(runs))
    assert err == f"next: nas train-supernet --out {runs / 'stopped'} --resume\n"  # only what is left to do


@pytest.mark.parametrize("what", ["empty", "file", "missing"])
def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path, capsys, what):
    target = tmp_path / what
    if what == "empty":
        target.mkdir()
    elif what == "file":
        target.write_text("x")
    assert main(["show", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("nas show: error: ")
    assert {"empty": "is not a run folder of nas", "file": "is not a folder",
            "missing": "does not exist"}[what] in captured.err
