"""`nas pipeline`: one run end to end on tiny settings (shared by the tests), its report, a rerun that skips every
stage, kills and stops in the stages followed by reruns that finish with the uninterrupted run's results, and the
one-line errors of bad stage options."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from nas.cli import main
from nas.cost_model import arch_cost
from nas.pipeline import baselines
from nas.pipeline.report import SECTIONS, write_report
from search_spaces import load_space
from tests.conftest import TINY16

# 2 epochs of 5 steps (160 images at batch 32), a search of 8 candidates, retraining of 2 steps an epoch.
TINY = {
    "train-supernet": {"epochs": 2, "train-subset": 160, "holdout": 60, "eval-random": 0, "save-every": 2,
                       "log-every": 1},
    "evolve": {"population": 4, "generations": 2, "mutations": 2, "crossovers": 1, "topk": 2},
    "retrain": {"epochs": 2, "train-subset": 64, "save-every": 1},
}
# tiny-16 (tests/spaces): tiny-32's genes at a tenth of the MACs; 1M is about its 20M on tiny-32
OPTIONS = ["--space", TINY16, "--flops", "1M", "--threads", "1", "--random", "1"]
HANG_GUARD_S = 600  # a marker that never appears fails the test instead of hanging it


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "pipeline.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_yaml) -> tuple[Path, str, str]:
    """(run folder, stdout, stderr) of one uninterrupted pipeline run."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(["pipeline", "-c", str(tiny_yaml), "--out", str(out), *OPTIONS]) == 0
    return out, stdout.getvalue(), stderr.getvalue()


def compared(out: Path) -> dict[str, str]:
    return json.loads((out / "archs" / "compared.json").read_text())["archs"]


def test_every_stage_writes_its_output(finished):
    out, *_ = finished
    names = compared(out)
    assert list(names)[0] == "found" and "random-1" in names
    assert (out / "supernet" / "final_eval.json").is_file() and (out / "search" / "best.yaml").is_file()
    for name in names:
        export = out / "model" if name == "found" else out / "baselines" / name
        assert json.loads((export / "meta.json").read_text())["arch_hash"] == names[name]
        assert json.loads((out / "retrain" / name / "final_eval.json").read_text())["arch"] == names[name]
    assert json.loads((out / "eval.json").read_text())["difference"] == 0  # the export reproduces the search
    stages = json.loads((out / "stages.json").read_text())
    assert all(entry["finished"] and entry["runs"] == 1 for entry in stages.values())
    assert {"train-supernet", "evolve", "export found", "eval", "latency"} <= set(stages)


def test_report_holds_every_section_and_every_compared_arch(finished):
    out, *_ = finished
    report = (out / "report.md").read_text()
    headings = re.findall(r"^## (.+)$", report, flags=re.M)
    assert headings == list(SECTIONS)
    section = report.split("## Found arch against baselines")[1].split("## ")[0]
    for name, arch in compared(out).items():
        row = next(line for line in section.splitlines() if f"`{arch}`" in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert re.fullmatch(r"\d+(\.\d+)?[KMG]?", cells[2]), row  # MACs
        assert all(re.fullmatch(r"\d+\.\d\d%", cell) for cell in cells[4:6]), row  # inherited, retrained
        assert re.fullmatch(r"\d+\.\d\d ms", cells[6]), row
    assert "| chance | a uniform guess |  |  | 10.00% | 10.00% |  |" in section
    assert re.search(r"the found arch \*\*(beats|does not beat)\*\* the biggest arch under the budget", section)
    assert "space `tiny-16` has none" in section
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![supernet training loss](training_curve.png)" in report and "(search/search.png)" in report
    reuse = report.split("## Reuse the model")[1]
    for path in re.findall(r'(?:arch|checkpoint_path)="([^"]+)"', reuse):
        assert Path(path).is_file(), path
    assert "timm.create_model" in reuse and f"nas eval {out / 'model'}" in reuse
    assert f"nas retrain --init {out / 'model'}" in reuse


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.references, self.headings, self.images = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.references += [value for name, value in attrs if name in ("src", "href", "srcset", "data")]
        self.images += tag == "img"
        if tag == "link":
            self.references.append("<link>")

    def handle_data(self, data):
        if self.lasttag == "h2":
            self.headings.append(data)


def test_html_is_self_contained(finished):
    out, *_ = finished
    page = (out / "report.html").read_text()
    parser = _References()
    parser.feed(page)
    assert parser.images == 2
    assert parser.references and all(ref.startswith("data:image/png;base64,") for ref in parser.references)
    assert "url(" not in page and "@import" not in page
    assert [h for h in parser.headings if h.strip()] == list(SECTIONS)


def test_stdout_holds_only_the_result(finished):
    out, stdout, stderr = finished
    assert f"report: {out / 'report.html'}" in stdout
    assert "nas pipeline:" not in stdout and "epoch" not in stdout  # stage lines and progress went to stderr
    for arch in compared(out).values():
        assert arch[:8] in stdout
    hints = [line for line in stderr.splitlines() if line.startswith("next:")]
    assert len(hints) == 1 and str(out / "retrain" / "found" / "model") in hints[0]  # the pipeline's own only


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_rerun_skips_every_finished_stage(finished, tiny_yaml, capsys):
    out, *_ = finished
    before = _files(out)
    assert main(["pipeline", "-c", str(tiny_yaml), "--out", str(out), *OPTIONS]) == 0
    after = _files(out)
    rewritten = {"report.md", "report.html", "training_curve.png"}  # the report is written again from the files
    assert {k: v for k, v in after.items() if k not in rewritten} == {k: v for k, v in before.items()
                                                                     if k not in rewritten}
    assert capsys.readouterr().err.count("skipped") == len(json.loads((out / "stages.json").read_text()))


def test_nas_show_summarises_a_pipeline_and_its_resume_command_is_accepted(finished, tmp_path, capsys):
    out, *_ = finished
    assert main(["show", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["kind"], summary["complete"], summary["next"]) == ("pipeline", True, f"open {out / 'report.html'}")
    assert {run["folder"] for run in summary["runs"]} >= {str(out / "supernet"), str(out / "search"), str(out / "model")}
    # A copy stopped before its end: `nas show` says how to continue it, with the options it was run with.
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copy(out / "pipeline.yaml", stopped)
    stages = json.loads((out / "stages.json").read_text())
    (stopped / "stages.json").write_text(json.dumps({**stages, "latency": {**stages["latency"], "finished": False}}))
    assert main(["show", str(stopped), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert not summary["complete"] and summary["progress"]["stages"]["latency"] is False
    command = shlex.split(summary["next"])
    assert command[:4] == ["nas", "pipeline", "--out", str(stopped)]
    # Pointed at the finished run, that command is accepted as the same run (a differing option is refused).
    assert main(["pipeline", "--out", str(out), *command[4:]]) == 0
    assert capsys.readouterr().err.count("skipped") == len(stages)


def test_rerun_with_other_options_is_refused(finished, tiny_yaml, capsys):
    out, *_ = finished
    assert main(["pipeline", "-c", str(tiny_yaml), "--out", str(out), *OPTIONS, "--seed", "1",
                 "--set", "retrain.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "seed: 0 in the run, 1 now" in err and "stages.retrain.epochs: 2 in the run, 3 now" in err


def _wait_then_kill(process: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not ready():
        assert process.poll() is None, f"the pipeline ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {HANG_GUARD_S} s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=HANG_GUARD_S)


def _candidates(out: Path) -> list[dict]:
    """The search's candidates without their trial numbers: a trial killed mid-evaluation is failed on resume and its
    arch evaluated again as a later trial."""
    with (out / "search" / "candidates.csv").open(newline="") as f:
        return sorted(({k: v for k, v in row.items() if k != "trial"} for row in csv.DictReader(f)),
                      key=lambda row: row["arch"])


def _journal_trials(out: Path) -> int:
    journal = out / "search" / "study.journal"
    return journal.read_text().count('"state":1,') if journal.exists() else 0


def test_kill_in_each_stage_then_rerun_finishes_as_an_uninterrupted_run(tmp_path, tiny_yaml, finished, capsys):
    reference, *_ = finished
    out = tmp_path / "run"
    argv = ["pipeline", "-c", str(tiny_yaml), "--out", str(out), *OPTIONS]

    # train-supernet stopped on request after 2 of its 10 steps (--stop-after: one invocation, not recorded)
    assert main([*argv, "--set", "train-supernet.stop-after=2"]) == 0
    assert "ended before its end" in capsys.readouterr().err
    assert not (out / "search").exists() and not (out / "supernet" / "final_eval.json").exists()

    command = [sys.executable, "-m", "nas", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    logs = []

    def start() -> subprocess.Popen:
        logs.append(tmp_path / f"stderr-{len(logs)}.txt")
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=logs[-1].open("w"))

    def last_log() -> str:
        return logs[-1].read_text()[-3000:]

    def metrics_step() -> int:
        lines = (out / "supernet" / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0

    _wait_then_kill(start(), lambda: metrics_step() >= 5, "training step 5")  # in train-supernet, after step 4's save
    assert not (out / "supernet" / "final_eval.json").exists(), last_log()

    _wait_then_kill(start(), lambda: _journal_trials(out) >= 3, "3 evaluated candidates")  # in evolve
    assert not (out / "model").exists(), last_log()
    supernet = _files(out / "supernet")

    _wait_then_kill(start(), lambda: (out / "retrain" / "found" / "checkpoint.pt").exists(), "a retrain checkpoint")
    assert not (out / "retrain" / "found" / "final_eval.json").exists(), last_log()
    search, model = _files(out / "search"), _files(out / "model")

    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert final.returncode == 0, final.stderr[-3000:]
    assert _files(out / "supernet") == supernet  # finished stages were not run again
    assert _files(out / "search") == search and _files(out / "model") == model

    # the results of the deterministic stages equal the uninterrupted run's
    for relative in ("supernet/final_eval.json", "search/best.yaml", "archs/compared.json"):
        assert (out / relative).read_text() == (reference / relative).read_text(), relative
    assert _candidates(out) == _candidates(reference)
    ours, theirs = (json.loads((folder / "eval.json").read_text()) for folder in (out, reference))
    assert (ours["top1"], ours["difference"]) == (theirs["top1"], theirs["difference"])
    assert _files(out / "archs").keys() == _files(reference / "archs").keys()
    for name in compared(reference):
        ours = json.loads((out / "retrain" / name / "final_eval.json").read_text())
        theirs = json.loads((reference / "retrain" / name / "final_eval.json").read_text())
        assert (ours["arch"], ours["top1"]) == (theirs["arch"], theirs["top1"]), name
    stages = json.loads((out / "stages.json").read_text())
    assert stages["train-supernet"]["runs"] == 2 and stages["train-supernet"]["finished"]  # the killed run uncounted


def test_a_stopped_search_is_continued_not_skipped(finished, tiny_yaml, tmp_path):
    """Ctrl-C in evolve writes best.yaml and search.json of what was evaluated, with "complete": false."""
    reference, *_ = finished
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    summary = out / "search" / "search.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "complete": False}))
    later = {name: _files(out / name) for name in ("model", "archs", "retrain")}

    assert main(["pipeline", "-c", str(tiny_yaml), "--out", str(out), *OPTIONS]) == 0
    assert json.loads(summary.read_text())["complete"] is True
    assert json.loads((out / "stages.json").read_text())["evolve"]["runs"] == 2
    assert (out / "search" / "best.yaml").read_text() == (reference / "search" / "best.yaml").read_text()
    assert {name: _files(out / name) for name in later} == later


def test_what_kills_in_export_eval_and_latency_leave_is_redone(finished, tiny_yaml, tmp_path):
    reference, *_ = finished
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    # a kill in the export: no export folder, a half-written hidden one beside it; in eval or latency: no file yet
    shutil.rmtree(out / "model")
    stale = out / ".model.k1ll3d.tmpdir"
    stale.mkdir()
    (stale / "arch.yaml").write_text("space: tiny-16\nst")
    (out / "eval.json").unlink()
    (out / "latency.json").unlink()
    kept = {name: _files(out / name) for name in ("supernet", "search", "archs", "baselines", "retrain")}

    assert main(["pipeline", "-c", str(tiny_yaml), "--out", str(out), *OPTIONS]) == 0
    assert not stale.exists()
    assert {name: _files(out / name) for name in kept} == kept  # only the missing outputs were made again
    ours, theirs = (json.loads((folder / "model" / "meta.json").read_text()) for folder in (out, reference))
    for key in ("arch_hash", "weights_sha256", "checkpoint_sha256", "inherited_top1", "macs", "params"):
        assert ours[key] == theirs[key], key
    assert json.loads((out / "eval.json").read_text())["difference"] == 0
    assert set(json.loads((out / "latency.json").read_text())["archs"]) == set(compared(out))


@pytest.mark.parametrize("text, message", [
    ("evolv: {population: 4}\n", "unknown section(s) ['evolv']; allowed: ['train-supernet', 'evolve', "),
    ("evolve: {popsize: 4}\n", "section 'evolve': unknown option(s) ['popsize'] of 'nas evolve'; allowed: "),
    ("train-supernet: {seed: 3}\n", "section 'train-supernet': 'seed' is set by the pipeline (use 'nas pipeline "
                                    "--seed')"),
    ("retrain: {out: runs/x}\n", "section 'retrain': 'out' is set by the pipeline (a path of its run folder)"),
    ("- evolve\n", "expected a mapping of stage sections"),
    ("evolve: [population]\n", "section 'evolve' must be a mapping of option: value"),
    ("evolve: {population: [\n", "is not valid YAML"),
    ("evolve: {population: many}\n", "the options of stage 'evolve': nas evolve: error: argument --population: "
                                     "invalid int value: 'many'"),
    ("train-supernet: {distill: 3}\n", "option 'distill' of 'nas train-supernet' is a flag: give true or false"),
])
def test_bad_pipeline_yaml_is_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "pipeline.yaml"
    config.write_text(text)
    assert main(["pipeline", "-c", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nas pipeline: error: ") and message in err, err
    assert not (tmp_path / "run").exists()  # nothing ran, nothing written


@pytest.mark.parametrize("argv, message", [
    (["--set", "evolve.population"], "--set 'evolve.population': expected STAGE.OPTION=VALUE"),
    (["--set", "search.population=3"], "--set 'search.population=3': unknown stage 'search'"),
    (["--space", "unified-224"], "--space 'unified-224' has no default budget: give --flops and/or --params"),
    (["--random", "-1"], "--random must be >= 0, got -1"),
    (["--flops", "100K"], "--flops 100K (100000) is below the smallest arch of space 'tiny-32': "),
])
def test_bad_options_are_one_line(tmp_path, capsys, argv, message):
    assert main(["pipeline", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_report_says_when_the_found_arch_is_the_biggest(finished, tmp_path):
    reference, *_ = finished
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    names = compared(out)
    names.pop("biggest")
    (out / "archs" / "compared.json").write_text(json.dumps({"archs": names, "found_is_biggest": True}))
    rows = write_report(out, "nas pipeline")
    assert [row.name for row in rows] == list(names)
    report = (out / "report.md").read_text()
    assert "The found arch is itself the biggest arch under the budget that the search saw" in report
    assert "**beats**" not in report and "**does not beat**" not in report


def test_report_names_the_fitness_the_search_ranked_by(finished, tmp_path):
    """The search section says what ranked the candidates: search.json's fitness (the loss by default;
    `--set evolve.fitness=top1`, which the pipeline accepts as an option of nas evolve, for top-1)."""
    from nas.pipeline.options import parse_set

    assert parse_set(["evolve.fitness=top1"]) == {"evolve": {"fitness": "top1"}}
    reference, *_ = finished
    report = (reference / "report.md").read_text()
    assert "fitness: inherited mean cross-entropy on 60 held-out train images" in report
    assert "![search: inherited mean cross-entropy against MACs](search/search.png)" in report
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    summary = json.loads((out / "search" / "search.json").read_text())
    (out / "search" / "search.json").write_text(json.dumps({**summary, "fitness": "top1"}))
    write_report(out, "nas pipeline")
    report = (out / "report.md").read_text()
    assert "fitness: inherited top-1 on 60 held-out train images" in report
    assert "![search: inherited top-1 against MACs](search/search.png)" in report


def test_baselines_are_within_the_budget(finished):
    out, *_ = finished
    space = load_space(TINY16)
    with (out / "search" / "candidates.csv").open(newline="") as f:
        most = max(int(row["macs"]) for row in csv.DictReader(f))
    assert arch_cost(baselines.biggest_candidate(out / "search" / "candidates.csv", space), space, 10)[0] == most
    archs = baselines.random_within(space, 10, 300_000, None, 5, seed=0, taken=set())
    assert len({a.hash for a in archs}) == 5
    assert all(arch_cost(a, space, 10)[0] <= 300_000 for a in archs)
    again = baselines.random_within(space, 10, 300_000, None, 5, seed=0, taken={archs[0].hash})
    assert archs[0].hash not in {a.hash for a in again}
    assert np.isfinite(json.loads((out / "latency.json").read_text())["archs"]["found"]["median_ms"])


def test_the_report_points_to_the_presets_only_where_they_belong():
    from nas.pipeline.report import _presets_note

    assert "nas retrain --preset NAME" in _presets_note("unified-224") and "biformer-t" in _presets_note("unified-224")
    assert _presets_note("tiny-32") == ("Published presets: space `tiny-32` has none (the presets are archs of "
                                        "unified-224), so none are compared.")
