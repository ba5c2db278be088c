"""The stages of a pipeline run, in order, each run in-process through `nas.cli.main` (so a stage is exactly the
command a user would type) and skipped when the file it writes at its very end is there:

    train-supernet   OUT/supernet           final_eval.json        (interrupted: rerun with --resume)
    evolve           OUT/search             search.json, "complete": true   (a stopped search writes it too,
                                                                             not complete; its journal resumes)
    export found     OUT/model              meta.json              (the folder is written as a whole)
    eval             OUT/eval.json          itself ('nas eval --json' of OUT/model)
    compare          OUT/archs              compared.json          (written as a whole)
    export NAME      OUT/baselines/NAME     meta.json
    retrain NAME     OUT/retrain/NAME       final_eval.json        (interrupted: rerun with --resume)
    latency          OUT/latency.json       itself
    report           OUT/report.md, OUT/report.html (written last)

OUT/stages.json records each stage's wall time (added up over the runs of it that returned) for the report.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console

from nas import cli
from nas.atomic_files import atomic_write
from nas.commands import hints_off
from nas.export.exported_model import META_FILE, read_meta
from nas.pipeline import baselines
from nas.pipeline.options import PipelineConfig, accepts, check_parses, stage_argv
from nas.run_folders import PIPELINE_STAGES, SEARCH_SUMMARY
from search_spaces import load_arch

STAGES_FILE, EVAL_FILE, LATENCY_FILE = PIPELINE_STAGES, "eval.json", "latency.json"
FINAL_EVAL = "final_eval.json"  # what train-supernet and retrain write after their final evaluation
STOP_STATUSES = (130, 143)  # SIGINT, SIGTERM


class StageEnded(Exception):
    """The pipeline ends before its report: a stage was stopped, failed, or stopped early on request."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class StageRecord:
    """OUT/stages.json: {stage: {"seconds": wall time of its runs that returned, "runs": n, "finished": bool}}."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.stages = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # a new run; unreadable: the times start again
            self.stages = {}

    def add(self, name: str, seconds: float, finished: bool) -> None:
        entry = self.stages.setdefault(name, {"seconds": 0.0, "runs": 0, "finished": False})
        entry.update(seconds=entry["seconds"] + seconds, runs=entry["runs"] + 1, finished=finished)
        atomic_write(self.path, (json.dumps(self.stages, indent=2) + "\n").encode())


class Layout:
    """The paths of a run folder."""

    def __init__(self, out: Path):
        self.out = out
        self.supernet, self.search, self.model = out / "supernet", out / "search", out / "model"
        self.archs, self.baselines, self.retrain = out / "archs", out / "baselines", out / "retrain"
        self.checkpoint = self.supernet / "checkpoint.pt"

    def export_of(self, name: str) -> Path:
        """The export folder of a compared arch (inherited weights): OUT/model for the found one."""
        return self.model if name == "found" else self.baselines / name


class Pipeline:
    def __init__(self, cfg: PipelineConfig, out: Path, invocation: dict[str, dict], rerun: str, console: Console):
        self.cfg, self.paths, self.invocation, self.rerun, self.console = cfg, Layout(out), invocation, rerun, console
        self.record = StageRecord(out / STAGES_FILE)

    # ------------------------------------------------------------------------------------------- command lines

    def _argv(self, stage: str, *fixed: str) -> list[str]:
        """`nas STAGE` with the pipeline's fixed options, its device and threads, then the stage's section and this
        invocation's options (e.g. --stop-after)."""
        shared = []
        if accepts(stage, "device"):
            shared += ["--device", self.cfg.device]
        if accepts(stage, "threads"):
            shared += ["--threads", str(self.cfg.threads)]
        section = {**self.cfg.stages.get(stage, {}), **self.invocation.get(stage, {})}
        return [stage, *fixed, *shared, *stage_argv(stage, section)]

    def train_argv(self) -> list[str]:
        resume = ["--resume"] if self.paths.checkpoint.exists() else []
        return self._argv("train-supernet", "--out", str(self.paths.supernet), "--space", self.cfg.space,
                          "--data", self.cfg.data, "--seed", str(self.cfg.seed), *resume)

    def evolve_argv(self) -> list[str]:
        budget = []
        if self.cfg.flops is not None:
            budget += ["--flops", str(self.cfg.flops)]
        if self.cfg.params is not None:
            budget += ["--params", str(self.cfg.params)]
        return self._argv("evolve", "--supernet", str(self.paths.checkpoint), "--out", str(self.paths.search),
                          "--seed", str(self.cfg.seed), *budget)

    def export_argv(self, arch_file: Path, folder: Path) -> list[str]:
        holdout = self.cfg.stages["evolve"].get("holdout")
        same_images = ["--holdout", str(holdout)] if holdout and "holdout" not in self.cfg.stages["export"] else []
        return self._argv("export", "--supernet", str(self.paths.checkpoint), "--arch", str(arch_file),
                          "--out", str(folder), *same_images)

    def eval_argv(self) -> list[str]:
        return self._argv("eval", str(self.paths.model), "--json")

    def retrain_argv(self, name: str, holdout: int) -> list[str]:
        out = self.paths.retrain / name
        start = (["--init", str(self.paths.export_of(name))] if self.cfg.retrain_from == "inherited"
                 else ["--arch", str(self.paths.archs / f"{name}.yaml")])
        keep_unseen = [] if "holdout" in self.cfg.stages["retrain"] else ["--holdout", str(holdout)]
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        return self._argv("retrain", "--out", str(out), *start, "--data", self.cfg.data, "--seed",
                          str(self.cfg.seed), *keep_unseen, *resume)

    def check(self) -> None:
        """Parse every stage's command line now, so that a bad option is one line before anything runs."""
        for stage, argv in (("train-supernet", self.train_argv()), ("evolve", self.evolve_argv()),
                            ("export", self.export_argv(self.paths.search / "best.yaml", self.paths.model)),
                            ("eval", self.eval_argv()), ("retrain", self.retrain_argv("found", 1))):
            check_parses(stage, argv[1:])

    # ------------------------------------------------------------------------------------------------ running

    def run(self) -> None:
        """Every stage not complete yet, in order. StageEnded when one is stopped, fails or ends early."""
        paths = self.paths
        self.stage("train-supernet", self.train_argv, paths.supernet / FINAL_EVAL)
        self.stage("evolve", self.evolve_argv, paths.search / SEARCH_SUMMARY, ready=_search_complete)
        self.stage("export found", lambda: self.export_argv(paths.search / "best.yaml", paths.model),
                   paths.model / META_FILE)
        self.stage("eval", self.eval_argv, paths.out / EVAL_FILE,
                   on_success=lambda text: atomic_write(paths.out / EVAL_FILE, _json_object(text, "nas eval")))
        self.step("compare", paths.archs / baselines.COMPARED_FILE, self.choose_baselines)
        names = list(baselines.read_compared(paths.archs)["archs"])
        for name in names[1:]:
            self.stage(f"export {name}", lambda: self.export_argv(paths.archs / f"{name}.yaml", paths.baselines / name),
                       paths.baselines / name / META_FILE)
        holdout = yaml.safe_load((paths.supernet / "config.yaml").read_text()).get("holdout") or 0
        for name in names:
            self.stage(f"retrain {name}", lambda: self.retrain_argv(name, holdout),
                       paths.retrain / name / FINAL_EVAL)
        self.step("latency", paths.out / LATENCY_FILE, lambda: self.measure_latency(names))

    def stage(self, name: str, argv, marker: Path, ready=Path.is_file, on_success=None) -> None:
        """Run `nas argv()` unless `ready(marker)`: by default, unless the file `marker` is there.
        Its stdout (tables) goes to stderr, so the pipeline's stdout holds only its own result; `on_success`, if
        given, gets the stdout text instead and writes the marker."""
        if self.complete(name, marker, ready):
            return
        line = argv()
        self.console.print(f"[bold]nas pipeline:[/] {name}: nas {shlex.join(line)}", soft_wrap=True, highlight=False)
        captured = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(captured if on_success else sys.stderr), hints_off():
            status = cli.main(line)
        if status == 0 and on_success:
            on_success(captured.getvalue())
        finished = status == 0 and ready(marker)
        self.record.add(name, time.perf_counter() - start, finished)
        if status in STOP_STATUSES:
            raise StageEnded(status, f"stopped in stage {name!r}; to continue, rerun the same command: {self.rerun}")
        if status != 0:
            raise StageEnded(status, f"stage {name!r} failed (status {status}; its error is above); the run folder "
                                     f"keeps the finished stages: fix it and rerun: {self.rerun}")
        if not finished:
            raise StageEnded(0, f"stage {name!r} ended before its end (--stop-after); to continue, rerun without "
                                f"it: {self.rerun}")

    def step(self, name: str, marker: Path, work) -> None:
        """The pipeline's own work between stages (no command of its own), skipped when `marker` is there."""
        if self.complete(name, marker, Path.is_file):
            return
        start = time.perf_counter()
        work()
        self.record.add(name, time.perf_counter() - start, marker.is_file())

    def complete(self, name: str, marker: Path, ready) -> bool:
        done = ready(marker)
        if done:
            self.console.print(f"[bold]nas pipeline:[/] {name}: complete ({marker}), skipped", soft_wrap=True,
                               highlight=False)
        return done

    def choose_baselines(self) -> None:
        found, space = load_arch(self.paths.search / "best.yaml")
        num_classes = read_meta(self.paths.model)["num_classes"]
        biggest = baselines.biggest_candidate(self.paths.search / "candidates.csv", space)
        randoms = baselines.random_within(space, num_classes, self.cfg.flops, self.cfg.params, self.cfg.random,
                                          self.cfg.seed, {found.hash, biggest.hash})
        baselines.write_compared(self.paths.archs, found, biggest, randoms)

    def measure_latency(self, names: list[str]) -> None:
        from nas.pipeline.latency import cpu_latency_ms  # torch-heavy: only when measuring

        self.console.print(f"[bold]nas pipeline:[/] latency: {len(names)} exported models, batch 1, "
                           f"{self.cfg.threads} thread(s)", highlight=False)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # a busy CPU reads slower: say how busy
        measured = {name: cpu_latency_ms(self.paths.export_of(name), self.cfg.threads) for name in names}
        atomic_write(self.paths.out / LATENCY_FILE,
                     (json.dumps({"archs": measured, "load_before": load, "cpus": os.cpu_count()}, indent=2)
                      + "\n").encode())


def _search_complete(summary: Path) -> bool:
    """Whether nas evolve's search.json says the search is over (a stopped search writes it too, not complete)."""
    try:
        return json.loads(summary.read_text()).get("complete") is True
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def _json_object(text: str, command: str) -> bytes:
    """The one JSON object a `--json` command printed, re-encoded; ValueError when it printed something else."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{command} --json printed no JSON object: {text[:200]!r}") from None
    return (json.dumps(value, indent=2) + "\n").encode()
