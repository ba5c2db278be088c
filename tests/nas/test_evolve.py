"""`nas evolve`: candidates respect the budget, no arch is evaluated twice (one process, a resume after a kill,
two workers on a journal file and on SQLite), a resumed search ends like an uninterrupted one, the outputs are
right, and user mistakes are one error line with status 2."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from rich.console import Console

from nas.cli import main
from nas.cost_model import arch_cost
from nas.search.optuna_adapter import storage_of
from nas.search.sampler import CLAIM_KEY
from nas.search.workers import WORKER_KEY
from nas.search.evolve import EvolveConfig, run_evolution
from nas.search.candidates import pareto_front
from nas.search.study import open_storage
from nas.train.config import TrainConfig
from nas.train.supernet import train_supernet
from search_spaces import load_arch, load_space
from tests.conftest import TINY16, enumerate_archs

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 230_000  # about a third of tiny-16's random archs fit (cheap candidates: the search is tested, not the model)
SMALL = dict(population=6, topk=3, generations=3, mutations=3, crossovers=3, holdout=120, batch_size=120,
             device="cpu", poll_s=0.05)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is as fast and does not fight the other pytest-xdist worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real train-supernet checkpoint of tiny-16 after a few SPOS steps on digits."""
    out = tmp_path_factory.mktemp("supernet")
    cfg = TrainConfig(space=TINY16, epochs=1, batch_size=16, stop_after=3, eval_random=0, out=str(out), device="cpu",
                      holdout=0)
    train_supernet(cfg, console=Console(file=io.StringIO()))
    return out / "checkpoint.pt"


def search(checkpoint: Path, out: Path, **options):
    cfg = EvolveConfig(supernet=str(checkpoint), out=str(out), **{**SMALL, "flops": BUDGET, **options})
    return run_evolution(cfg, console=Console(file=io.StringIO(), width=120))


def completed(storage: str | None, out: Path, study: str = "evolve") -> list:
    storage, _ = open_storage(storage, out)
    return optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.COMPLETE,))


@pytest.fixture(scope="module")
def uninterrupted(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return search(checkpoint, out), out


def test_budget_is_never_exceeded_and_no_arch_is_evaluated_twice(uninterrupted):
    result, out = uninterrupted
    space = load_space(TINY16)
    trials = completed(None, out)
    hashes = [t.system_attrs[CLAIM_KEY] for t in trials]
    assert len(hashes) == len(set(hashes)) == result.evaluated_here == len(result.rows) == 3 * 6
    for row in result.rows:
        macs, _ = arch_cost(row.arch, space, 10)
        assert macs == row.macs <= BUDGET
    assert all(t.constraints["macs"] <= 0 for t in trials)  # what optuna's feasibility checks read
    assert [r.score for r in result.rows] == sorted((r.score for r in result.rows), reverse=True)


def test_outputs(uninterrupted):
    result, out = uninterrupted
    with (out / "candidates.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.rows)
    assert {r["arch"] for r in rows} == {c.arch.hash for c in result.rows}
    assert min(float(r["loss"]) for r in rows) == pytest.approx(result.best.loss, abs=1e-6)  # the default fitness
    best, _ = load_arch(out / "best.yaml")
    assert best == result.best.arch
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = {c.arch.hash for c in pareto_front(result.rows)}
    assert {r["arch"] for r in rows if r["on_front"] == "1"} == front
    for c in result.rows:  # nothing on the front is beaten on both axes
        if c.arch.hash in front:
            assert not any(o.score > c.score and o.macs < c.macs for o in result.rows)


def test_generations_take_parents_from_the_best(uninterrupted, checkpoint):
    """Later generations hold children of the top-k: on average they share more genes with the parents than
    random archs do (each gene is kept with probability 0.9 by a mutation, 0.5+ by a crossover)."""
    result, out = uninterrupted
    space = load_space(TINY16)
    by_generation = {}
    for c in result.rows:
        by_generation.setdefault(c.generation, []).append(c)
    assert sorted(by_generation) == [0, 1, 2] and all(len(v) == 6 for v in by_generation.values())
    parents = sorted(by_generation[0], key=lambda c: (-c.score, c.macs, c.arch.hash))[:3]

    def closeness(c) -> int:
        genome = space.encode(c.arch)
        return max(sum(a == b for a, b in zip(genome, space.encode(p.arch))) for p in parents)

    children = [closeness(c) for c in by_generation[1] if c.arch not in {p.arch for p in parents}]
    strangers = [closeness(c) for c in by_generation[0] if c not in parents]
    assert sum(children) / len(children) > sum(strangers) / len(strangers)


def test_parents_are_the_topk_of_everything_before(uninterrupted):
    """SPOS keeps the best: the stored parents of generation g are the top-k (by the fitness, the loss by default,
    then MACs, then hash) of every candidate of the generations before g."""
    result, out = uninterrupted
    storage, _ = open_storage(None, out)
    study = optuna.load_study(study_name="evolve", storage=storage)
    stored = storage.get_study_system_attrs(study._study_id)
    by_number = {c.trial: c for c in result.rows}
    for g in (1, 2):
        earlier = sorted((c for c in result.rows if c.generation < g), key=lambda c: (c.loss, c.macs, c.arch.hash))
        parents = {by_number[study.trials[i].number].arch for i in stored[f"EvolutionSampler:parent:{g}"]}
        assert parents == {c.arch for c in earlier[:3]}


def test_dead_workers_of_this_host_are_failed_and_others_left_alone(tmp_path):
    from nas.search.workers import fail_dead_local_trials, worker_identity

    storage, _ = open_storage(None, tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    host, space, pid, start = worker_identity()
    other_boot = "0" * 36 + ":" + space.split(":")[1]
    identities = {
        "me": [host, space, pid, start],  # this very process: alive
        "reused pid": [host, space, pid, "1"],  # our pid, another start time: a dead earlier process
        "no such pid": [host, space, 2 ** 22 + 1, "1"],  # beyond pid_max
        "earlier boot": [host, other_boot, 1, "1"],
        "other host": ["elsewhere", space, 2 ** 22 + 1, "1"],  # cannot be judged from here
    }
    numbers = {}
    for name, identity in identities.items():
        trial = study.ask()
        storage.set_trial_system_attr(trial._trial_id, WORKER_KEY, identity)
        numbers[name] = trial.number
    assert fail_dead_local_trials(study) == 3
    states = {name: study.trials[n].state for name, n in numbers.items()}
    assert states == {"me": TrialState.RUNNING, "reused pid": TrialState.FAIL, "no such pid": TrialState.FAIL,
                      "earlier boot": TrialState.FAIL, "other host": TrialState.RUNNING}


def test_an_interrupted_search_resumes_to_the_same_result(checkpoint, uninterrupted, tmp_path, monkeypatch):
    """An exception inside an evaluation (here: the 8th) fails that trial; running again finishes the search
    with the same candidates and the same best arch, and evaluates the failed arch once more only."""
    import nas.search.fitness

    calls, original = {"n": 0}, nas.search.fitness.Fitness.top1_and_loss

    def flaky(self, arch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, arch)

    monkeypatch.setattr(nas.search.fitness.Fitness, "top1_and_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        search(checkpoint, tmp_path)
    monkeypatch.setattr(nas.search.fitness.Fitness, "top1_and_loss", original)
    result = search(checkpoint, tmp_path)
    assert result.evaluated_here == 18 - 7
    reference, _ = uninterrupted
    assert result.best.arch == reference.best.arch
    assert [(c.arch, c.top1) for c in result.rows] == [(c.arch, c.top1) for c in reference.rows]


# A `nas evolve` child process with test hooks, set by environment variables, that park it at a known point
# (until a signal ends it) and write PARK_MARKER there, so a test acts on an event, never after a delay:
# PARK_AT_EVALUATION=N parks it in its evaluation N + 1 (N evaluated); PARK_IN_LOCK_AFTER=N parks it inside a
# journal append (holding LOCK, the journal's lock) once N evaluations have begun; MEET=DIR makes the first evaluation
# of each worker wait until MEET_COUNT workers have begun one (so each evaluates at least one); NAS_TEST_HOSTNAME=NAME
# makes it pass for a worker of another host (whose pid this host cannot check).
WORKER = """\
import os, socket, sys, time
from pathlib import Path
import nas.search.fitness

hooks, evaluated = os.environ, 0
if "NAS_TEST_HOSTNAME" in hooks:
    socket.gethostname = lambda: hooks["NAS_TEST_HOSTNAME"]
original_fitness, original_fsync = nas.search.fitness.Fitness.top1_and_loss, os.fsync

def park():
    Path(hooks["PARK_MARKER"]).write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)

def meet(folder):
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 600  # a hang guard only
    while len(list(folder.iterdir())) < int(hooks.get("MEET_COUNT", 2)):
        if time.monotonic() > deadline:
            sys.exit("the other workers never began an evaluation")
        time.sleep(0.05)

def fitness(self, arch):
    global evaluated
    if evaluated == int(hooks.get("PARK_AT_EVALUATION", -1)):
        park()
    if evaluated == 0 and "MEET" in hooks:
        meet(Path(hooks["MEET"]))
    evaluated += 1
    return original_fitness(self, arch)

def fsync(fd):
    original_fsync(fd)
    if evaluated == int(hooks.get("PARK_IN_LOCK_AFTER", -1)) and os.path.lexists(hooks["LOCK"]):
        park()

nas.search.fitness.Fitness.top1_and_loss = fitness
os.fsync = fsync
from nas.cli import main
sys.exit(main(sys.argv[1:]))
"""


def evolve_argv(checkpoint: Path, out: Path | str, *extra: str) -> list[str]:
    """The `nas evolve` arguments of `search(checkpoint, out)` (SMALL, the budget), then `extra` (which wins)."""
    argv = ["evolve", "--supernet", str(checkpoint), "--flops", str(BUDGET), "--out", str(out)]
    for key, value in SMALL.items():
        if key != "poll_s":
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv + list(extra)


def worker(checkpoint: Path, out: Path | str, *extra: str, cwd: Path = ROOT, **hooks) -> subprocess.Popen:
    """`nas evolve` of `search(checkpoint, out)` in a child process, with the WORKER hooks given."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **{k: str(v) for k, v in hooks.items()}}
    return subprocess.Popen([sys.executable, "-c", WORKER, *evolve_argv(checkpoint, out, *extra)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(event, what: str, process: subprocess.Popen | None = None, guard_s: float = 600):
    """Poll `event()` until it is true; fail naming `what` if `process` ends first or the hang guard runs out."""
    deadline = time.monotonic() + guard_s
    while not event():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the search ended before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {guard_s:.0f} s (a hang guard)")
        time.sleep(0.05)


def finish(process: subprocess.Popen, guard_s: float = 600) -> tuple[str, str]:
    """Wait for a child search to end (with a hang guard); (stdout, stderr)."""
    try:
        return process.communicate(timeout=guard_s)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the search did not end within {guard_s:.0f} s (a hang guard): {process.communicate()}")


def test_a_killed_search_resumes_to_the_same_best(checkpoint, uninterrupted, tmp_path):
    """SIGKILL mid-evaluation (the 6th) leaves a RUNNING trial; the next run on this host fails it (its process
    is gone), plans the same generations and ends with the same best arch and the same candidates."""
    marker = tmp_path / "parked"
    process = worker(checkpoint, tmp_path, PARK_AT_EVALUATION=5, PARK_MARKER=marker)
    wait_for(marker.exists, "6th evaluation", process)
    process.kill()
    process.wait()
    assert len(completed(None, tmp_path)) == 5
    result = search(checkpoint, tmp_path)
    assert result.events["failed_dead_trials"] == 1
    assert result.evaluated_here == 18 - 5
    reference, _ = uninterrupted
    assert result.best.arch == reference.best.arch
    assert sorted(c.arch.hash for c in result.rows) == sorted(c.arch.hash for c in reference.rows)


@pytest.mark.parametrize("backend", ["journal", "sqlite"])
def test_two_workers_share_one_study_without_duplicates(checkpoint, uninterrupted, tmp_path, backend):
    storage = f"sqlite:///{tmp_path / 'search.db'}" if backend == "sqlite" else str(tmp_path / "shared.journal")
    meet = tmp_path / "meet"
    meet.mkdir()
    processes = [worker(checkpoint, tmp_path / f"worker{i}", "--storage", storage, MEET=meet) for i in range(2)]
    for p in processes:
        _, stderr = finish(p)
        assert p.returncode == 0, stderr
    trials = completed(storage, tmp_path)
    hashes = [t.system_attrs[CLAIM_KEY] for t in trials]
    assert len(hashes) == len(set(hashes)) == 18
    assert len({t.system_attrs[WORKER_KEY][2] for t in trials}) == 2  # both workers (pids) evaluated some
    reference, _ = uninterrupted
    assert sorted(hashes) == sorted(c.arch.hash for c in reference.rows)  # the same plans as one worker
    for i in range(2):  # both report the finished search
        assert load_arch(tmp_path / f"worker{i}" / "best.yaml")[0] == reference.best.arch


def test_pareto_objective_reports_the_front(checkpoint, tmp_path):
    result = search(checkpoint, tmp_path, objective="pareto", fitness="top1", flops=None)
    study = optuna.load_study(study_name="evolve", storage=open_storage(None, tmp_path)[0])
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["top1", "macs"]  # optuna-dashboard's names, not "Objective 0"
    optuna_front = {t.system_attrs[CLAIM_KEY] for t in study.best_trials}
    assert {c.arch.hash for c in result.rows if c.on_front} <= optuna_front  # optuna keeps ties on both axes
    assert len({c.arch.hash for c in result.rows}) == len(result.rows) == 18


def test_a_budget_that_admits_few_archs_ends_the_search_early(tiny_space_dir, tmp_path):
    """When no unseen arch fits, the plan is empty and the search stops: all candidates fit, none is repeated."""
    space_file = str(tiny_space_dir / "tiny-enum.yaml")
    space = load_space(space_file)
    cfg = TrainConfig(space=space_file, epochs=1, batch_size=16, stop_after=1, eval_random=0, out=str(tmp_path / "s"),
                      device="cpu", holdout=0)
    train_supernet(cfg, console=Console(file=io.StringIO()))
    costs = sorted(arch_cost(a, space, 10)[0] for a in enumerate_archs(space))
    budget = costs[5]  # 6 archs fit, or a few more on ties
    fits = sum(c <= budget for c in costs)
    result = search(tmp_path / "s" / "checkpoint.pt", tmp_path, flops=budget, population=4, mutations=2,
                    crossovers=2, generations=6)
    assert all(c.macs <= budget for c in result.rows)
    assert len({c.arch for c in result.rows}) == len(result.rows) <= fits < 4 * 6


def test_resuming_with_other_settings_is_refused(checkpoint, uninterrupted, capsys):
    _, out = uninterrupted
    status = main(["evolve", "--supernet", str(checkpoint), "--flops", "7M", "--out", str(out), "--holdout", "120"])
    err = capsys.readouterr().err
    assert status == 2 and "other settings" in err and f"flops {BUDGET} (now 7000000)" in err


@pytest.mark.parametrize("argv, message", [
    (["--flops", "4X"], "--flops: '4X': expected a positive count"),
    (["--flops", "0"], "expected a positive count"),
    (["--flops=-1G"], "expected a positive count"),
    (["--params", "lots"], "--params: 'lots'"),
    (["--flops", "10K"], "below the smallest arch of space 'tiny-16': {smallest}"),
    (["--params", "1K"], "below the smallest arch of space 'tiny-16'"),
    (["--flops", "8M", "--holdout", "5000"], "--holdout 5000: expected an int in [1, 1436]"),
    (["--flops", "8M", "--population", "0"], "--population must be an int >= 1"),
    (["--flops", "8M", "--mutation-prob", "1.5"], "--mutation-prob must be in [0, 1]"),
    (["--flops", "8M", "--population", "20", "--mutations", "15", "--crossovers", "10"],
     "--mutations + --crossovers (15 + 10) must be at most --population (20)"),
    (["--flops", "8M", "--strategy", "random", "--mutations", "2"], "--mutations 2: --strategy random has no parents"),
    (["--flops", "8M", "--strategy", "greedy"], "argument --strategy: invalid choice: 'greedy'"),
    (["--flops", "8M", "--fitness", "acc"], "argument --fitness: invalid choice: 'acc'"),
    (["--flops", "8M", "--threads", "-1"], "--threads must be an int >= 0, got -1"),
    (["--flops", "8M", "--seed", "-1"], "--seed must be an int >= 0, got -1"),
    (["--flops", "nan"], "--flops: 'nan': expected a positive count"),
    (["--flops", "inf"], "--flops: 'inf': expected a positive count"),
    (["--params=-5M"], "--params: '-5M': expected a positive count"),
    (["--flops", "8M", "--mutation-prob", "nan"], "--mutation-prob must be in [0, 1], got nan"),
    (["--flops", "8M", "--mutation-prob", "inf"], "--mutation-prob must be in [0, 1], got inf"),
    (["--flops", "8M", "--mutation-prob", "-0.1"], "--mutation-prob must be in [0, 1], got -0.1"),
    (["--flops", "8M", "--seed", "nan"], "argument --seed: invalid int value: 'nan'"),
    (["--flops", "8M", "--generations", "inf"], "argument --generations: invalid int value: 'inf'"),
    (["--flops", "8M", "--generations", "0"], "--generations must be an int >= 1, got 0"),
    (["--flops", "8M", "--topk", "-2"], "--topk must be an int >= 1, got -2"),
    (["--flops", "8M", "--mutations", "-1"], "--mutations must be an int >= 0, got -1"),
    (["--flops", "8M", "--crossovers", "-1"], "--crossovers must be an int >= 0, got -1"),
    (["--flops", "8M", "--holdout", "-5"], "--holdout must be >= 1, got -5"),
    (["--flops", "8M", "--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
    (["--flops", "8M", "--heartbeat", "0"], "--heartbeat must be an int >= 1, got 0"),
    (["--flops", "8M", "--heartbeat", "nan"], "argument --heartbeat: invalid int value: 'nan'"),
    (["--flops", "8M", "--storage", "nosuchdb://x"], "--storage 'nosuchdb://x': cannot open it"),
])
def test_bad_input_is_one_error_line(checkpoint, tmp_path, capsys, argv, message):
    if "{smallest}" in message:  # the cost model's own figure, as `nas space` prints it
        from nas.cost_model import space_cost_range
        from nas.units import human

        low = space_cost_range(load_space(TINY16))["min_macs"]
        message = message.format(smallest=f"{human(low)} ({low}) MACs")
    status = main(["evolve", "--supernet", str(checkpoint), "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err  # nothing printed before it


def test_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    assert main(["evolve", "--supernet", str(tmp_path / "none.pt"), "--flops", "8M"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_json_prints_the_best(uninterrupted, checkpoint, capsys):
    """Running a finished search again evaluates nothing and reports the same best: stdout holds only the JSON,
    the table and the next step go to stderr."""
    result, out = uninterrupted
    assert main(evolve_argv(checkpoint, out, "--json")) == 0
    captured = capsys.readouterr()
    best = json.loads(captured.out)
    assert best["arch"] == result.best.arch.hash and best["candidates"] == 18
    assert "top 10 of 18 candidates" in captured.err
    assert f"next: nas export --supernet {checkpoint} --arch {out / 'best.yaml'} --out {out / 'model'}" in captured.err


def test_the_table_goes_to_stdout(uninterrupted, checkpoint, capsys):
    result, out = uninterrupted
    assert main(evolve_argv(checkpoint, out)) == 0
    captured = capsys.readouterr()
    assert "top 10 of 18 candidates" in captured.out and result.best.arch.hash in captured.out
    assert "top 10" not in captured.err and "next: nas export" in captured.err


def test_the_study_names_its_metric_and_search_json_says_it_is_complete(uninterrupted, checkpoint):
    result, out = uninterrupted
    study = optuna.load_study(study_name="evolve", storage=open_storage(None, out)[0])
    assert study.metric_names == ["loss"]
    summary = json.loads((out / "search.json").read_text())
    assert summary["complete"] is True and summary["evaluated"] == summary["planned"] == 18
    assert summary["best"]["arch"] == result.best.arch.hash and summary["holdout"] == SMALL["holdout"]


@pytest.mark.parametrize("population, expected", [(50, 25), (8, 4), (7, 3), (1, 0)])
def test_mutations_and_crossovers_default_to_half_the_population(population, expected):
    cfg = EvolveConfig(supernet="unused.pt", population=population).validate()
    assert (cfg.mutations, cfg.crossovers) == (expected, expected)
    explicit = EvolveConfig(supernet="unused.pt", population=population, mutations=0, crossovers=1).validate()
    assert (explicit.mutations, explicit.crossovers) == (0, 1)
    assert EvolveConfig(supernet="unused.pt", population=population, strategy="random").validate().mutations == 0


def test_random_strategy_draws_every_generation_at_random_within_the_budget(checkpoint, tmp_path):
    """--strategy random: population x generations candidates, generation g being the first feasible, unseen
    draws of the generator seeded (seed, g): no parent shapes them."""
    result = search(checkpoint, tmp_path, strategy="random", mutations=None, crossovers=None)
    space = load_space(TINY16)
    assert len(result.rows) == SMALL["population"] * SMALL["generations"]
    seen, expected = set(), {}
    for generation in range(SMALL["generations"]):
        rng = np.random.default_rng([0, generation])
        while sum(g == generation for g in expected.values()) < SMALL["population"]:
            arch = space.sample(rng)
            if arch.hash not in seen and arch_cost(arch, space, 10)[0] <= BUDGET:
                seen.add(arch.hash)
                expected[arch.hash] = generation
    assert {c.arch.hash: c.generation for c in result.rows} == expected
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["strategy"] == "random" and summary["complete"]


def test_population_8_generations_1_just_works(checkpoint, tmp_path, capsys):
    assert main(["evolve", "--supernet", str(checkpoint), "--flops", str(BUDGET), "--out", str(tmp_path),
                 "--population", "8", "--generations", "1", "--holdout", "120", "--device", "cpu",
                 "--threads", "1"]) == 0
    assert len(list(csv.DictReader((tmp_path / "candidates.csv").open()))) == 8


@pytest.fixture(scope="module")
def by_top1(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("by_top1")
    return search(checkpoint, out, fitness="top1"), out


def loaded(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="evolve", storage=open_storage(None, out)[0])


def stored_parents(study: optuna.Study, rows, generation: int) -> set:
    by_number = {c.trial: c for c in rows}
    stored = storage_of(study).get_study_system_attrs(study._study_id)
    return {by_number[study.trials[i].number].arch for i in stored[f"EvolutionSampler:parent:{generation}"]}


def test_loss_fitness_ranks_and_selects_by_the_held_out_loss(uninterrupted, by_top1):
    """The default fitness: the trial value is the inherited mean cross-entropy (minimised), candidates are ranked
    by it and every trial records top-1 too; top-1 and loss are measured exactly as under --fitness top1
    (generation 0, random and seeded alike, holds the same archs with the same figures)."""
    result, out = uninterrupted
    study = loaded(out)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.metric_names == ["loss"]
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.values == [t.user_attrs["loss"]] and 0 <= t.user_attrs["top1"] <= 1
    losses = [c.loss for c in result.rows]
    assert losses == sorted(losses) and len(set(losses)) > 1
    reference, _ = by_top1
    first = {c.arch.hash: (c.top1, c.loss) for c in reference.rows if c.generation == 0}
    assert {c.arch.hash: (c.top1, c.loss) for c in result.rows if c.generation == 0} == first
    with (out / "candidates.csv").open() as f:
        rows = {r["arch"]: r for r in csv.DictReader(f)}
    assert all(float(rows[c.arch.hash]["loss"]) == pytest.approx(c.loss, abs=1e-6) for c in result.rows)
    summary = json.loads((out / "search.json").read_text())
    assert summary["fitness"] == "loss" and summary["best"]["loss"] == min(losses)
    front = [c for c in result.rows if c.on_front]
    assert front and not any(o.loss < c.loss and o.macs < c.macs for c in front for o in result.rows)


def test_top1_fitness_ranks_and_selects_by_inherited_top1(by_top1):
    """--fitness top1 (SPOS's): the value is the top-1 (maximised), the parents the top-k by top-1, the front on
    (top-1, MACs)."""
    result, out = by_top1
    study = loaded(out)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.metric_names == ["top1"]
    assert all(t.values == [t.user_attrs["top1"]] for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert [c.top1 for c in result.rows] == sorted((c.top1 for c in result.rows), reverse=True)
    for g in (1, 2):
        earlier = sorted((c for c in result.rows if c.generation < g), key=lambda c: (-c.top1, c.macs, c.arch.hash))
        assert stored_parents(study, result.rows, g) == {c.arch for c in earlier[:3]}
    assert json.loads((out / "search.json").read_text())["fitness"] == "top1"
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = [c for c in result.rows if c.on_front]
    assert front and not any(o.top1 > c.top1 and o.macs < c.macs for c in front for o in result.rows)


@pytest.mark.parametrize("fixture, option, message", [
    ("uninterrupted", ["--fitness", "top1"], "fitness 'loss' (now 'top1')"),
    ("by_top1", [], "fitness 'top1' (now 'loss')"),
])
def test_resuming_with_another_fitness_is_refused(request, checkpoint, capsys, fixture, option, message):
    _, out = request.getfixturevalue(fixture)
    assert main(evolve_argv(checkpoint, out, *option)) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and message in err and err.count("\n") == 1


def test_a_study_of_before_the_fitness_was_recorded_resumes_as_top1(by_top1, checkpoint, tmp_path, capsys):
    """Studies started before --fitness existed record no fitness and ranked by top-1: they resume with
    --fitness top1, and the new default (the loss) is refused, naming the option."""
    from nas.search.study import SETTINGS_KEY

    result, reference = by_top1
    out = tmp_path / "old"
    shutil.copytree(reference, out)
    study = loaded(out)
    study.set_user_attr(SETTINGS_KEY, {k: v for k, v in study.user_attrs[SETTINGS_KEY].items() if k != "fitness"})
    assert main(evolve_argv(checkpoint, out)) == 2
    assert "fitness 'top1' (now 'loss')" in capsys.readouterr().err
    assert main(evolve_argv(checkpoint, out, "--fitness", "top1", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == result.best.arch.hash


def test_pareto_on_the_loss_minimises_both(checkpoint, tmp_path):
    result = search(checkpoint, tmp_path, objective="pareto", flops=None)
    study = loaded(tmp_path)
    assert study.metric_names == ["loss", "macs"]
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    optuna_front = {t.system_attrs[CLAIM_KEY] for t in study.best_trials}
    assert {c.arch.hash for c in result.rows if c.on_front} <= optuna_front
