"""`nas evolve`: SPOS's evolutionary search of a trained supernet under a MACs and/or params budget.

The search is an optuna study driven trial by trial (ask, evaluate, tell) with `EvolutionSampler`; the fitness is
the inherited mean cross-entropy on a fixed held-out split (the default: it ranked archs closer to stand-alone
training than top-1 did, and its winners retrained better; docs/search_quality.md), or (`fitness="top1"`) the
inherited top-1 there, SPOS's own. Both are recorded on every trial (user attributes "top1" and "loss"); the
trial's value is the one ranked by. Budgets go into every trial as constraints (`trial.set_constraint`, <= 0 =
feasible), which the plans guarantee, so optuna's tools (best_trials, the dashboard) see a feasible study.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from rich.console import Console

from nas.atomic_files import atomic_write
from nas.cost_model import arch_cost, extreme_arch
from nas.data.splits import default_holdout, fitness_split
from nas.interrupts import Stopped, signals_deferred
from nas.options import FITNESS_BATCH_SIZE, HEARTBEAT_S, torch_threads
from nas.progress import ProgressBars
from nas.run_folders import SEARCH_SUMMARY
from nas.search.candidates import Candidate, candidates
from nas.search.fitness import Fitness
from nas.search.fitness_kinds import FITNESS_BEFORE, FITNESSES, fitness_text
from nas.search.optuna_adapter import generation_key, trial_id
from nas.search.report import print_table, write_outputs
from nas.search.sampler import CLAIM_KEY, OBJECTIVES, EvolutionSampler, params_arch
from nas.search.study import open_storage, open_study, repair_journal
from nas.search.workers import WORKER_KEY, fail_dead_trials, heartbeat
from nas.train.distributed import resolve_device
from nas.train.trained_supernet import load_trained_supernet
from nas.units import human, percent
from search_spaces import Arch

WAIT_NOTICE_S = 60.0  # a worker that waits this long on others says on which trials
STRATEGIES = ("evolution", "random")  # random: every candidate a random arch within the budget (the baseline)
SETTINGS_BEFORE = {"fitness": FITNESS_BEFORE}  # what a study of before a setting was recorded ran with


@dataclass
class EvolveConfig:
    supernet: str
    flops: int | None = None  # MACs budget of one image
    params: int | None = None  # parameter budget
    objective: str = "top1"  # top1: SPOS, the single best subnet by the fitness; pareto: NSGA-II on (fitness, MACs)
    fitness: str = "loss"  # loss: inherited mean cross-entropy (lower is better); top1: inherited top-1 (higher)
    strategy: str = "evolution"  # or "random": population x generations random archs, no parents
    population: int = 50
    topk: int = 10
    generations: int = 20
    mutations: int | None = None  # default population // 2 (SPOS: 25 of 50); 0 with --strategy random
    mutation_prob: float = 0.1
    crossovers: int | None = None  # default population // 2 (SPOS: 25 of 50); 0 with --strategy random
    seed: int = 0
    out: str = "runs/evolve"
    storage: str | None = None  # default: OUT/study.journal
    study: str = "evolve"
    space: str | None = None  # only for a checkpoint that does not hold its space
    data: str | None = None  # default: the supernet run's data
    holdout: int | None = None  # default: the images the supernet run held out, else DEFAULT_HOLDOUT
    batch_size: int = FITNESS_BATCH_SIZE
    device: str = "auto"
    threads: int = 0  # torch threads; 0 = torch's default
    heartbeat: int = HEARTBEAT_S  # RDB storages: seconds between heartbeats of a running trial
    poll_s: float = 0.5  # how often a worker waiting for the others looks at the study again
    repair_journal: bool = False  # cut a torn end of the journal back to its last complete record first

    def validate(self) -> EvolveConfig:
        """Check every option (ValueError naming it) and resolve the default mutation and crossover counts."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy {self.strategy!r}: choose from {list(STRATEGIES)}")
        for name in ("mutations", "crossovers"):
            if self.strategy == "random" and getattr(self, name):
                raise ValueError(f"--{name} {getattr(self, name)}: --strategy random has no parents, so no children")
            if getattr(self, name) is None:
                scaled = self.population // 2 if isinstance(self.population, int) else self.population
                setattr(self, name, 0 if self.strategy == "random" else max(0, scaled))
        for name, low in (("population", 2 if self.objective == "pareto" else 1), ("topk", 1), ("generations", 1),
                          ("mutations", 0), ("crossovers", 0), ("batch_size", 1), ("heartbeat", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be an int >= {low}, got {value!r}")
        if self.mutations + self.crossovers > self.population:
            raise ValueError(f"--mutations + --crossovers ({self.mutations} + {self.crossovers}) must be at most "
                             f"--population ({self.population}): they are part of each generation")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an int >= 0, got {self.seed!r}")
        if not 0 <= self.mutation_prob <= 1:
            raise ValueError(f"--mutation-prob must be in [0, 1], got {self.mutation_prob}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective {self.objective!r}: choose from {list(OBJECTIVES)}")
        if self.fitness not in FITNESSES:
            raise ValueError(f"--fitness {self.fitness!r}: choose from {list(FITNESSES)}")
        if self.holdout is not None and self.holdout < 1:
            raise ValueError(f"--holdout must be >= 1, got {self.holdout}")
        resolve_device(self.device)
        return self


@dataclass
class SearchResult:
    out: Path
    best: Candidate
    rows: list[Candidate]  # every evaluated candidate of the study, best first
    evaluated_here: int  # subnets this worker evaluated
    fitness_seconds: float  # time this worker spent in subnet inference
    total_seconds: float  # wall time of this worker's search loop
    storage: str
    events: dict = field(default_factory=dict)  # counters: dead workers' trials failed at start


def run_evolution(cfg: EvolveConfig, console: Console | None = None, results: Console | None = None) -> SearchResult:
    """Run (or resume, or join) the search: progress and notes on `console` (default stderr), the final table on
    `results` (default `console`). Ctrl-C and SIGTERM (`Stopped`) write the outputs of what has been evaluated and
    say how to resume."""
    cfg.validate()
    console = console or Console(stderr=True)
    try:
        with torch_threads(cfg.threads):
            return _run_evolution(cfg, console, results or console)
    except Stopped as stop:
        stop.note = f"{stop.note or 'nothing evaluated yet'}; resume with: {resume_command(cfg)}"
        raise


def resume_command(cfg: EvolveConfig) -> str:
    """The `nas evolve` command line that runs this search again (its options that differ from the defaults)."""
    argv = ["nas", "evolve"]
    scaled = 0 if cfg.strategy == "random" else cfg.population // 2  # what --mutations / --crossovers default to
    for option in fields(cfg):
        value = getattr(cfg, option.name)
        default = scaled if option.name in ("mutations", "crossovers") else option.default
        if option.name not in ("poll_s", "repair_journal") and value != default:
            argv += [f"--{option.name.replace('_', '-')}", str(value)]
    return shlex.join(argv)


def _run_evolution(cfg: EvolveConfig, console: Console, results: Console) -> SearchResult:
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    trained = load_trained_supernet(cfg.supernet, cfg.space, device)
    space, num_classes = trained.space, trained.num_classes
    _check_budgets(cfg, space, num_classes)

    def cost(arch: Arch) -> tuple[int, int]:
        return arch_cost(arch, space, num_classes)

    def feasible(arch: Arch) -> bool:
        macs, params = cost(arch)
        return (cfg.flops is None or macs <= cfg.flops) and (cfg.params is None or params <= cfg.params)

    data = cfg.data or trained.config.get("data", "digits")
    holdout = cfg.holdout or default_holdout(trained.config)
    rest, held_out = fitness_split(data, holdout, space, num_classes)
    fitness = Fitness(trained.supernet, held_out, rest, cfg.batch_size, device)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.repair_journal:
        # soft_wrap: a long path must stay whole (rich folds words longer than the line)
        console.print(repair_journal(cfg.storage, out), soft_wrap=True, markup=False, highlight=False)
    storage, storage_name = open_storage(cfg.storage, out, cfg.heartbeat)
    # --strategy random: the same sampler with no children, so every generation is random archs within the budget
    sampler = EvolutionSampler(space, feasible, population=cfg.population, topk=cfg.topk,
                               generations=cfg.generations, mutations=cfg.mutations,
                               mutation_prob=cfg.mutation_prob, crossovers=cfg.crossovers, objective=cfg.objective,
                               fitness=cfg.fitness, seed=cfg.seed, poll_s=cfg.poll_s)
    directions = [FITNESSES[cfg.fitness]] + (["minimize"] if cfg.objective == "pareto" else [])
    metrics = [cfg.fitness] + (["macs"] if cfg.objective == "pareto" else [])  # what optuna's dashboard calls them
    settings = _settings(cfg, trained, data, holdout)
    study = open_study(storage, cfg.study, sampler, directions, settings, metrics, before=SETTINGS_BEFORE)
    events = {"failed_dead_trials": fail_dead_trials(study)}
    if not sampler.plan(study, 0).archs:
        raise ValueError(f"no arch of space {space.name!r} within {_budget_text(cfg)} was found in "
                         f"{sampler.max_tries * cfg.population} random draws; raise the budget")
    if not trained.config.get("holdout"):
        console.print(f"[yellow]note:[/] the supernet was trained on every train image of {data}, the "
                      f"{holdout} held out here included; train it with --holdout {holdout} for an unbiased "
                      "fitness", soft_wrap=True)
    done_before = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    console.print(f"search: space {space.name}, {_budget_text(cfg)}, objective {cfg.objective}, "
                  + ("random archs (the baseline), " if cfg.strategy == "random" else "")
                  + f"{cfg.generations} generations of {cfg.population}; fitness: {fitness_text(cfg.fitness)} on "
                  f"{holdout} held-out images of {data!r}; study {cfg.study!r} in {storage_name}"
                  + (f" (resuming: {done_before} candidates done)" if done_before else ""), soft_wrap=True)

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        evaluated = _search_loop(study, sampler, console, cfg.generations,
                                 lambda trial, arch: _evaluate(trial, arch, sampler, cost, feasible, fitness, cfg))
    except Stopped as stop:
        with signals_deferred(deliver=False):  # a second Ctrl-C must not cut the outputs short
            rows = _write_report(study, sampler, cfg, settings, complete=False)
        if rows:
            stop.note = (f"{len(rows)} candidates evaluated, the best so far in {out / 'best.yaml'} (also "
                         "candidates.csv, search.png)")
        raise
    total = time.perf_counter() - start

    rows = _write_report(study, sampler, cfg, settings, complete=True)
    print_table(results, rows, pareto=cfg.objective == "pareto")
    best = rows[0]
    loss = "" if best.loss is None else f", loss {best.loss:.4f}"
    results.print(f"best: {best.arch.hash}, top-1 {100 * best.top1:.2f}%{loss}, {human(best.macs)} MACs, "
                  f"{human(best.params)} params -> {out / 'best.yaml'}; all candidates in {out / 'candidates.csv'}, "
                  f"plot {out / 'search.png'}", soft_wrap=True)
    return SearchResult(out, best, rows, evaluated, fitness.seconds, total, storage_name, events)


def _search_loop(study: optuna.Study, sampler: EvolutionSampler, console: Console, generations: int,
                 evaluate) -> int:
    """Ask, evaluate (`evaluate(trial, arch)` -> values) and tell until the plans are done; how many this
    worker evaluated."""
    evaluated, waiting_since, noticed = 0, None, False
    with _GenerationBars(console, sampler, generations, sampler.fitness) as bars:
        while True:
            progress = sampler.generation_state(study)
            bars.update(study, progress)
            if progress.plan is None:
                return evaluated
            if not progress.free:  # other workers hold the rest of this generation
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > WAIT_NOTICE_S and not noticed:
                    noticed = True
                    console.print(f"waiting for other workers to finish generation {progress.generation}: "
                                  f"{_running(study)}", soft_wrap=True)
                sampler.wait(study)
                continue
            waiting_since, noticed = None, False
            trial = study.ask()
            with heartbeat(study, trial_id(study, trial)):
                try:
                    trial.relative_params  # optuna samples lazily: this runs the sampler, which claims an arch
                    arch = sampler.claimed(trial.number)
                    if arch is None:  # the search ended between the check and the ask
                        study.tell(trial, state=TrialState.FAIL)
                        continue
                    values = evaluate(trial, arch)
                except BaseException:  # Ctrl-C included: never leave a RUNNING trial that holds a claim
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    raise
                finished = study.tell(trial, values, skip_if_finished=True)
            if finished.state == TrialState.COMPLETE:
                evaluated += 1
            else:  # its heartbeat was missed: another worker failed it, and its arch went back to the plan
                console.print(f"trial {trial.number} was failed by another worker meanwhile (a missed heartbeat); "
                              "its result is dropped and its arch evaluated again", soft_wrap=True)


def _write_report(study: optuna.Study, sampler: EvolutionSampler, cfg: EvolveConfig, settings: dict,
                  complete: bool) -> list[Candidate]:
    """OUT/best.yaml, candidates.csv, search.png and search.json of what the study has evaluated (nothing when it
    has not); `complete`: the search is over."""
    rows = candidates(study, sampler.space, generation_key(sampler), cfg.fitness)
    if rows:
        seen = max(c.generation for c in rows) + 1
        title = (f"{sampler.space.name}, {_budget_text(cfg)}: {len(rows)} candidates in {seen} of "
                 f"{cfg.generations} generations")
        out = Path(cfg.out)
        write_outputs(out, rows, cfg.flops, title)
        best = rows[0]
        summary = {**settings, "kind": "search", "strategy": cfg.strategy, "generations": cfg.generations,
                   "supernet": cfg.supernet, "complete": complete, "evaluated": len(rows), "generations_seen": seen,
                   "planned": cfg.population * cfg.generations,
                   "best": {"arch": best.arch.hash, "top1": best.top1, "loss": best.loss, "macs": best.macs,
                            "params": best.params, "file": str(out / "best.yaml")},
                   "resume": resume_command(cfg)}
        atomic_write(out / SEARCH_SUMMARY, json.dumps(summary, indent=2).encode())
    return rows


def _evaluate(trial: optuna.Trial, arch: Arch, sampler: EvolutionSampler, cost, feasible, fitness: Fitness,
              cfg: EvolveConfig) -> list[float]:
    """Record the trial's genes, cost and constraints, then measure its fitness."""
    genes = params_arch(sampler.space, {name: trial.suggest_categorical(name, d.choices)
                                        for name, d in sampler.distributions.items()})
    assert genes == arch and feasible(arch), "a trial evaluates the feasible arch it claimed"
    macs, params = cost(arch)
    trial.set_user_attr("macs", macs)
    trial.set_user_attr("params", params)
    if cfg.flops is not None:
        trial.set_constraint("macs", macs - cfg.flops)
    if cfg.params is not None:
        trial.set_constraint("params", params - cfg.params)
    top1, loss = fitness.top1_and_loss(arch)
    trial.set_user_attr("top1", top1)
    trial.set_user_attr("loss", loss)
    value = top1 if cfg.fitness == "top1" else loss
    return [value] if cfg.objective == "top1" else [value, macs]


def _running(study: optuna.Study) -> str:
    """The running trials and their workers, for a worker that waits on them."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return ", ".join(f"trial {t.number} ({t.system_attrs.get(WORKER_KEY, ['?'])[0]}, pid "
                     f"{(t.system_attrs.get(WORKER_KEY) or [None] * 3)[2]})" for t in running) or "none"


def _check_budgets(cfg: EvolveConfig, space, num_classes: int) -> None:
    for option, budget, metric, index in (("--flops", cfg.flops, "macs", 0), ("--params", cfg.params, "params", 1)):
        if budget is None:
            continue
        smallest = arch_cost(extreme_arch(space, largest=False, metric=metric), space, num_classes)[index]
        if budget < smallest:
            raise ValueError(f"{option} {human(budget)} ({budget}) is below the smallest arch of space "
                             f"{space.name!r}: {human(smallest)} ({smallest}) {'MACs' if index == 0 else 'params'}")


def _budget_text(cfg: EvolveConfig) -> str:
    parts = [f"{human(cfg.flops)} MACs" if cfg.flops else "", f"{human(cfg.params)} params" if cfg.params else ""]
    return "budget " + " and ".join(p for p in parts if p) if any(parts) else "no budget"


def _settings(cfg: EvolveConfig, trained, data: str, holdout: int) -> dict:
    """What a resume or another worker must share (--generations may grow: plans do not depend on it)."""
    shared = {k: v for k, v in asdict(cfg).items() if k in ("flops", "params", "objective", "fitness", "population",
                                                          "topk", "mutations", "mutation_prob", "crossovers", "seed")}
    if cfg.strategy == "random":  # recorded only then, so that a study of before --strategy resumes as it was
        shared["strategy"] = cfg.strategy
    return {**shared, "space": trained.space.name, "space_hash": trained.space.hash,
            "checkpoint_sha256": trained.sha256, "data": data, "holdout": holdout}


class _GenerationBars:
    """One rich progress bar per generation: best fitness so far, mean of the generation, evaluated, rejected."""

    def __init__(self, console: Console, sampler: EvolutionSampler, generations: int, fitness: str):
        self.sampler, self.generations, self.tasks = sampler, generations, {}
        self.best = max if fitness == "top1" else min
        self.text = percent if fitness == "top1" else lambda v: percent(v) if v is None else f"loss {v:.4f}"
        # plain lines (a log): one as each generation ends, and one every PLAIN_EVERY_S while it runs
        self.progress = ProgressBars(console, lambda f: f"gen {f['gen']:>2} of {f['of']}",
                                     lambda f: f"best {f['best']}  mean {f['mean']}  evaluated {f['evaluated']}  "
                                               f"rejected {f['rejected']}", unit="candidates", plain_steps=1)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, study: optuna.Study, progress) -> None:
        """Bar g: its share of the plan done, the best so far up to g, the mean of g, counts up to g."""
        key = generation_key(self.sampler)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        scored = [(t.system_attrs.get(key), t.values[0]) for t in complete if t.system_attrs.get(CLAIM_KEY)]
        for g in range(min(progress.generation, self.generations - 1) + 1):
            plan = self.sampler.plan(study, g)
            if not plan.archs:
                break
            if g in self.tasks and self.progress.finished(self.tasks[g]):
                continue
            upto = [v for gen, v in scored if gen <= g]
            values = [v for gen, v in scored if gen == g]
            fields = dict(gen=g, of=self.generations, best=self.text(self.best(upto, default=None)),
                          mean=self.text(np.mean(values) if values else None), evaluated=len(upto),
                          rejected=sum(self.sampler.plan(study, h).rejected for h in range(g + 1)))
            if g not in self.tasks:
                self.tasks[g] = self.progress.add(len(plan.archs), len(values), **fields)
            self.progress.update(self.tasks[g], len(values), **fields)
