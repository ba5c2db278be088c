"""The options of a pipeline run: its own (space, data, budget, seed, ...) and each stage's, from the sections of
`-c PIPELINE.yaml` and from `--set STAGE.OPTION=VALUE`, checked against the stages' own parsers and resolved into
OUT/pipeline.yaml, which is written once: a rerun with other options is refused, naming what differs."""
from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import yaml

from nas.atomic_files import atomic_write
from nas.run_folders import PIPELINE_CONFIG
from nas.units import human
from search_spaces.loading import read_yaml

STAGES = ("train-supernet", "evolve", "export", "eval", "retrain")

# What the pipeline passes to each stage itself: its own options, or paths inside the run folder.
OWNED = {
    "train-supernet": {"space": "--space", "data": "--data", "seed": "--seed", "threads": "--threads",
                       "device": "--device", "out": None, "resume": None, "config": None},
    "evolve": {"flops": "--flops", "params": "--params", "seed": "--seed", "threads": "--threads",
               "device": "--device", "supernet": None, "out": None, "space": None, "json": None},
    "export": {"device": "--device", "threads": "--threads", "supernet": None, "arch": None, "out": None,
               "space": None, "force": None, "json": None},
    "eval": {"device": "--device", "threads": "--threads", "json": None},
    "retrain": {"data": "--data", "seed": "--seed", "threads": "--threads", "device": "--device",
                "arch": None, "init": "--retrain-from", "out": None, "resume": None, "config": None},
}
# The pipeline's defaults for the stages, sized so that the default run (tiny-32, digits) fits 10 minutes on 2 cores
# (docs/pipeline.md): a search of 100 candidates, and a short fine-tuning of each compared arch.
STAGE_DEFAULTS = {
    "evolve": {"population": 20, "generations": 5, "mutations": 10, "crossovers": 10},
    "retrain": {"epochs": 5},
}
# Options of one invocation, not of the run: not recorded in pipeline.yaml, so a rerun without them continues.
PER_INVOCATION = {"train-supernet": {"stop-after"}, "retrain": {"stop-after"}, "evolve": {"repair-journal"}}

DEFAULT_BUDGETS = {"tiny-32": {"flops": 20_000_000}}  # MACs; other spaces need --flops or --params
CONFIG_FILE = PIPELINE_CONFIG


@dataclass
class PipelineConfig:
    space: str
    data: str
    flops: int | None
    params: int | None
    seed: int
    threads: int  # torch threads of every stage (0 resolved to torch's count before it is recorded)
    device: str
    random: int  # random archs under the budget in the comparison
    retrain_from: str  # inherited: every compared arch fine-tuned from its supernet weights; scratch: random init
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> {long option: value}, the resolved ones

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def _stage_parsers() -> dict[str, argparse.ArgumentParser]:
    from nas.cli import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def stage_parser(stage: str) -> argparse.ArgumentParser:
    """The parser of `nas STAGE` (what nas.cli.main will parse), to check options against before anything runs."""
    return _stage_parsers()[stage]


def long_options(stage: str) -> dict[str, argparse.Action]:
    """The stage's options by long name without dashes (`population`), --help left out."""
    actions = stage_parser(stage)._option_string_actions
    return {name[2:]: action for name, action in actions.items()
            if name.startswith("--") and not name.startswith("--no-") and action.dest != "help"}


def accepts(stage: str, option: str) -> bool:
    return option in long_options(stage)


def read_sections(path: str | Path) -> dict[str, dict]:
    """The stage sections of a -c PIPELINE.yaml file; ValueError naming the file and what is wrong."""
    path = Path(path)
    data = read_yaml(path, "-c")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"-c {str(path)!r}: expected a mapping of stage sections ({', '.join(STAGES)})")
    unknown = sorted(str(k) for k in data if k not in STAGES)
    if unknown:
        raise ValueError(f"-c {str(path)!r}: unknown section(s) {unknown}; allowed: {list(STAGES)}")
    sections = {}
    for stage, options in data.items():
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(f"-c {str(path)!r}: section {stage!r} must be a mapping of option: value, "
                             f"got {options!r}")
        sections[stage] = {str(k).replace("_", "-"): v for k, v in options.items()}
        check_keys(stage, sections[stage], f"-c {str(path)!r}: section {stage!r}")
    return sections


def parse_set(items: list[str]) -> dict[str, dict]:
    """--set STAGE.OPTION=VALUE items as sections (VALUE read as YAML: 3, 0.5, true, text)."""
    sections: dict[str, dict] = {}
    for item in items:
        name, equals, text = item.partition("=")
        stage, dot, option = name.partition(".")
        if not equals or not dot or not option:
            raise ValueError(f"--set {item!r}: expected STAGE.OPTION=VALUE, e.g. evolve.population=10")
        if stage not in STAGES:
            raise ValueError(f"--set {item!r}: unknown stage {stage!r}; allowed: {list(STAGES)}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        option = option.replace("_", "-")
        check_keys(stage, {option: value}, f"--set {item!r}")
        sections.setdefault(stage, {})[option] = value
    return sections


def check_keys(stage: str, options: dict, where: str) -> None:
    """ValueError unless every key is a long option of `nas STAGE` that the pipeline does not set itself."""
    known = long_options(stage)
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        allowed = sorted(k for k in known if k not in OWNED[stage])
        raise ValueError(f"{where}: unknown option(s) {unknown} of 'nas {stage}'; allowed: {allowed}")
    for key in options:
        if key in OWNED[stage]:
            own = OWNED[stage][key]
            raise ValueError(f"{where}: {key!r} is set by the pipeline"
                             + (f" (use 'nas pipeline {own}')" if own else " (a path of its run folder)"))


def stage_argv(stage: str, options: dict) -> list[str]:
    """The command-line form of a section: a flag for true, --no-FLAG (or nothing) for false, else --OPTION VALUE."""
    actions = long_options(stage)
    argv = []
    for key, value in options.items():
        action = actions[key]
        if action.nargs == 0:  # a flag
            if not isinstance(value, bool):
                raise ValueError(f"option {key!r} of 'nas {stage}' is a flag: give true or false, got {value!r}")
            if value:
                argv.append(f"--{key}")
            elif isinstance(action, argparse.BooleanOptionalAction):
                argv.append(f"--no-{key}")
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def check_parses(stage: str, argv: list[str]) -> None:
    """ValueError with the stage parser's own message when `nas STAGE argv` would not parse: a bad value is found
    before the stages ahead of it have run for minutes."""
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message):
            stage_parser(stage).parse_args(argv)
    except SystemExit:
        text = message.getvalue().strip().splitlines()
        raise ValueError(f"the options of stage {stage!r}: {text[-1] if text else 'do not parse'}") from None


def resolve_stages(file_sections: dict[str, dict], set_sections: dict[str, dict]) -> tuple[dict, dict]:
    """(the run's stage options, this invocation's): the pipeline's defaults < the file < --set."""
    stages, invocation = {}, {}
    for stage in STAGES:
        merged = {**STAGE_DEFAULTS.get(stage, {}), **file_sections.get(stage, {}), **set_sections.get(stage, {})}
        once = PER_INVOCATION.get(stage, set())
        stages[stage] = {k: v for k, v in merged.items() if k not in once}
        invocation[stage] = {k: v for k, v in merged.items() if k in once}
    return stages, invocation


def default_budget(space: str, flops: int | None, params: int | None) -> tuple[int | None, int | None]:
    if flops is not None or params is not None:
        return flops, params
    if space in DEFAULT_BUDGETS:
        budget = DEFAULT_BUDGETS[space]
        return budget.get("flops"), budget.get("params")
    raise ValueError(f"--space {space!r} has no default budget: give --flops and/or --params "
                     f"(defaults exist for {sorted(DEFAULT_BUDGETS)})")


def check_budget(space: str, flops: int | None, params: int | None) -> None:
    """ValueError when a budget is below the smallest arch of the space: found now, not after the supernet's training
    (nas evolve checks it again with the data's classes)."""
    from nas.cost_model import space_cost_range
    from search_spaces import load_space

    costs = space_cost_range(load_space(space))
    for option, budget, smallest, unit in (("--flops", flops, costs["min_macs"], "MACs"),
                                           ("--params", params, costs["min_params"], "params")):
        if budget is not None and budget < smallest:
            raise ValueError(f"{option} {human(budget)} ({budget}) is below the smallest arch of space {space!r}: "
                             f"{human(smallest)} ({smallest}) {unit}")


def save_or_check(cfg: PipelineConfig, out: Path) -> None:
    """Write OUT/pipeline.yaml for a new run; for a rerun, ValueError naming every option that differs from it."""
    path = out / CONFIG_FILE
    resolved = cfg.to_dict()
    try:
        saved = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        atomic_write(path, yaml.safe_dump(resolved, sort_keys=False).encode())
        return
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{str(path)!r} cannot be read ({type(exc).__name__}): choose another --out, or delete "
                         f"the run folder to start again") from None
    differences = _differences(saved if isinstance(saved, dict) else {}, resolved)
    if differences:
        raise ValueError(f"{str(out)!r} holds a pipeline run with other options ({'; '.join(differences)}): rerun "
                         f"with the options in {str(path)!r}, or choose another --out")


def _differences(saved: dict, resolved: dict, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(saved) | set(resolved), key=str):
        there, here = saved.get(key), resolved.get(key)
        if isinstance(there, dict) and isinstance(here, dict):
            lines += _differences(there, here, f"{prefix}{key}.")
        elif there != here:
            lines.append(f"{prefix}{key}: {there!r} in the run, {here!r} now")
    return lines
