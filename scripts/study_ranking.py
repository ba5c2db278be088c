"""The ranking study: does a supernet's inherited top-1 order archs the way stand-alone training does?

    python scripts/study_ranking.py --data digits --out runs/ranking-digits \
        --supernet default=runs/supernet/checkpoint.pt [--supernet distill=runs/sn-distill/checkpoint.pt ...]

1. Picks `--archs` archs stratified by MACs over the whole space (`nas.search.ranking.stratified_archs`, deterministic).
2. Trains each stand-alone from scratch with one fixed recipe (`nas retrain`: `--epochs`, the same --holdout
   images left out), 2 seeds for `--two-seeds` of them, and takes their val top-1 (the mean over seeds).
3. For each supernet, measures the inherited top-1 and mean cross-entropy of the archs on the held-out split its
   training did not see (the split `nas evolve` ranks on), with evolve's own `Fitness`.
4. Prints Kendall tau and Spearman rho of each inherited predictor (top-1; the loss, negated) against stand-alone,
   with bootstrap 90% intervals, and the same for MACs alone and params alone; writes OUT/ranking.json,
   OUT/ranking.md and OUT/ranking_<name>.png.

Without --supernet, it trains one first (`nas train-supernet` defaults plus --data, --holdout, --train-subset and
--supernet-epochs, in OUT/supernet). Every stand-alone run and every supernet run is a resumable run folder under
OUT: rerunning the same command continues where it stopped and reuses what is done.

`--mode search` compares search strategies at equal evaluations on one supernet: evolution and random search (one
generation of `--evaluations` uniform archs), each ranking by inherited top-1 and by inherited loss (`nas evolve
--fitness`; random search evaluates the same archs either way, so its loss winner is read from the same
candidates), and the biggest arch under the budget; each winner is retrained stand-alone (an arch found twice is
trained once), over `--search-seeds` seeds (OUT/search.json, OUT/search.md). `--search-holdout` ranks on the
first N of the held-out images (the held-out split of N is a prefix of the one of --holdout, so still unseen).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from nas.atomic_files import atomic_write
from nas.cost_model import arch_cost
from nas.data.splits import fitness_split
from nas.options import FITNESS_BATCH_SIZE
from nas.search.evolve import EvolveConfig, run_evolution
from nas.search.fitness import Fitness
from nas.search.ranking import correlation_summary, stratified_archs
from nas.train.config import RetrainConfig, TrainConfig
from nas.train.distributed import resolve_device
from nas.train.retrain import retrain
from nas.train.supernet import train_supernet
from nas.train.trained_supernet import load_trained_supernet
from nas.units import human, parse_count
from search_spaces import Arch, load_space

console = Console(stderr=True)
quiet = Console(stderr=True, quiet=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add = parser.add_argument
    add("--mode", choices=("ranking", "search"), default="ranking", help="ranking (default) or search strategies")
    add("--out", required=True, help="the study folder (resumable)")
    add("--space", default="tiny-32", help="the search space (default tiny-32)")
    add("--data", default="digits", help="--data of every run (default digits)")
    add("--holdout", type=int, default=500, help="train images held out of every training: inherited top-1 is "
                                                  "measured on them (default 500)")
    add("--train-subset", type=int, default=0, help="train on a fixed subset of N images (0 = all; default 0)")
    add("--supernet", action="append", default=[], metavar="NAME=CKPT",
        help="a trained supernet to judge (repeatable); none: train one in OUT/supernet")
    add("--supernet-epochs", type=int, default=40, help="epochs of the supernet trained without --supernet "
                                                         "(default 40, train-supernet's)")
    add("--supernet-option", action="append", default=[], metavar="KEY=VALUE",
        help="an option of the supernet trained without --supernet (repeatable), e.g. distill=true")
    add("--archs", type=int, default=12, help="archs stratified by MACs (default 12)")
    add("--two-seeds", type=int, default=4, help="archs (spread over the cheaper half) trained with a 2nd seed to show "
                                               "the noise of the stand-alone figure (default 4)")
    add("--epochs", type=int, default=10, help="epochs of every stand-alone training (default 10)")
    add("--seed", type=int, default=0, help="seed of the choice of archs (default 0)")
    add("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    add("--flops", default="20M", help="search mode: the MACs budget (default 20M)")
    add("--evaluations", type=int, default=100, help="search mode: subnets each search evaluates (default 100)")
    add("--search-seeds", type=int, default=3, help="search mode: seeds per strategy (default 3)")
    add("--search-holdout", type=int, default=0, help="search mode: rank on the first N held-out images "
                                                       "(default 0: all --holdout of them)")
    return parser.parse_args(argv)


def standalone_top1(args, arch: Arch, name: str, seed: int) -> float:
    """Val top-1 of `arch` trained from scratch (resumes or reuses OUT/standalone/NAME_sSEED)."""
    out = Path(args.out) / "standalone" / f"{name}_s{seed}"
    done = out / "final_eval.json"
    if done.exists():
        return json.loads(done.read_text())["top1"]
    arch_file = out.parent / f"{name}.yaml"
    arch_file.parent.mkdir(parents=True, exist_ok=True)
    arch.save(arch_file)
    cfg = RetrainConfig(arch=str(arch_file), data=args.data, holdout=args.holdout, train_subset=args.train_subset,
                        epochs=args.epochs, seed=seed, out=str(out), resume=(out / "checkpoint.pt").exists())
    return retrain(cfg, quiet).top1


def supernet_checkpoints(args) -> dict[str, Path]:
    if args.supernet:
        pairs = [s.partition("=") for s in args.supernet]
        if any(not sep or not name or not path for name, sep, path in pairs):
            raise SystemExit(f"--supernet: expected NAME=CKPT, got {args.supernet}")
        return {name: Path(path) for name, _, path in pairs}
    out = Path(args.out) / "supernet"
    options = {}
    for item in args.supernet_option:
        key, _, value = item.partition("=")
        field = TrainConfig.__dataclass_fields__[key.replace("-", "_")]
        options[field.name] = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}.get(
            field.type, str)(value)
    if not (out / "final_eval.json").exists():
        console.print(f"training the supernet in {out} ...")
        train_supernet(TrainConfig(data=args.data, holdout=args.holdout, train_subset=args.train_subset,
                                   epochs=args.supernet_epochs, out=str(out), resume=(out / "checkpoint.pt").exists(),
                                   **options), console)
    return {"supernet": out / "checkpoint.pt"}


def inherited_scores(args, checkpoint: Path, archs: list[Arch]) -> tuple[list[float], list[float]]:
    """(top-1s, mean cross-entropies) of the archs on inherited weights, on the held-out split."""
    device = resolve_device("auto")
    trained = load_trained_supernet(checkpoint, device=device)
    holdout = trained.config.get("holdout", 0)
    if holdout != args.holdout or trained.config.get("data") != args.data:
        raise SystemExit(f"supernet {checkpoint}: trained on --data {trained.config.get('data')!r} with --holdout "
                         f"{holdout}; the study needs --data {args.data!r} --holdout {args.holdout} (images unseen "
                         f"in training)")
    rest, held_out = fitness_split(args.data, holdout, trained.space, trained.num_classes)
    fitness = Fitness(trained.supernet, held_out, rest, FITNESS_BATCH_SIZE, device)
    scores = [fitness.top1_and_loss(arch) for arch in archs]
    return [s[0] for s in scores], [s[1] for s in scores]


def scatter(path: Path, name: str, inherited, standalone, macs, tau: float) -> None:
    figure = Figure(figsize=(6.5, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    points = ax.scatter(100 * np.asarray(inherited), 100 * np.asarray(standalone), c=np.log10(macs), cmap="viridis",
                        s=36, edgecolors="black", linewidths=0.4)
    figure.colorbar(points, ax=ax, label="log10 MACs")
    ax.set_xlabel("inherited top-1 on the held-out split (%)")
    ax.set_ylabel("stand-alone val top-1 (%)")
    ax.set_title(f"{name}: Kendall tau {tau:+.2f} over {len(macs)} archs", fontsize=10)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write(path, buffer.getvalue())


def ranking_study(args) -> None:
    space = load_space(args.space)
    archs = stratified_archs(space, args.archs, seed=args.seed)
    names = [f"arch{i:02d}" for i in range(len(archs))]
    # the second seeds go to the cheaper half of the archs (spread over it): the noise they show is that of one
    # fixed recipe, and the largest archs would double the study's time
    two = (set(np.linspace(0, (len(archs) - 1) // 2, args.two_seeds).round().astype(int).tolist())
           if args.two_seeds else set())
    checkpoints = supernet_checkpoints(args)

    runs = [(i, seed) for i in range(len(archs)) for seed in ((0, 1) if i in two else (0,))]
    standalone: dict[int, dict[int, float]] = {}
    with console.status("") as status:
        for n, (i, seed) in enumerate(runs):
            status.update(f"stand-alone training {n + 1}/{len(runs)}: {names[i]} "
                          f"({human(arch_cost(archs[i], space)[0])} MACs), seed {seed}")
            standalone.setdefault(i, {})[seed] = standalone_top1(args, archs[i], names[i], seed)
    truth = [float(np.mean(list(standalone[i].values()))) for i in range(len(archs))]
    costs = [arch_cost(a, space) for a in archs]
    macs, params = [c[0] for c in costs], [c[1] for c in costs]
    seed_gaps = [abs(s[0] - s[1]) for s in standalone.values() if len(s) == 2]

    result = {"space": space.name, "data": args.data, "holdout": args.holdout, "train_subset": args.train_subset,
              "epochs": args.epochs, "command": " ".join(sys.argv),
              "archs": [{"name": names[i], "hash": a.hash, "macs": macs[i], "params": params[i],
                         "standalone": standalone[i], "genes": a.to_dict()} for i, a in enumerate(archs)],
              "seed_gap_mean": float(np.mean(seed_gaps)) if seed_gaps else None,
              "baselines": {"macs": correlation_summary(macs, truth), "params": correlation_summary(params, truth)},
              "supernets": {}}
    for name, checkpoint in checkpoints.items():
        inherited, losses = inherited_scores(args, checkpoint, archs)
        summary = correlation_summary(inherited, truth)
        # a lower loss predicts a better arch: the loss predictor is its negative
        result["supernets"][name] = {"checkpoint": str(checkpoint), "inherited": inherited, **summary,
                                     "inherited_loss": losses,
                                     "loss": correlation_summary([-v for v in losses], truth)}
        scatter(Path(args.out) / f"ranking_{name}.png", name, inherited, truth, macs, summary["kendall_tau"])
    atomic_write(Path(args.out) / "ranking.json", json.dumps(result, indent=2).encode())
    atomic_write(Path(args.out) / "ranking.md", ranking_markdown(result).encode())
    print(ranking_markdown(result))


def _interval(summary: dict, key: str) -> str:
    low, high = summary[f"{key}_interval"]
    return f"{summary[key]:+.2f} [{low:+.2f}, {high:+.2f}]"


def ranking_markdown(result: dict) -> str:
    lines = [f"Ranking study: {result['space']} on {result['data']} ({len(result['archs'])} archs, stand-alone "
             f"{result['epochs']} epochs, held-out {result['holdout']})", "",
             "| predictor | Kendall tau [90% CI] | Spearman rho [90% CI] |", "|---|---|---|"]
    rows = [row for name, s in result["supernets"].items()
            for row in ((f"inherited top-1 ({name})", s), (f"inherited loss ({name})", s["loss"]))]
    rows += [("MACs alone", result["baselines"]["macs"]), ("params alone", result["baselines"]["params"])]
    for label, summary in rows:
        lines.append(f"| {label} | {_interval(summary, 'kendall_tau')} | {_interval(summary, 'spearman_rho')} |")
    lines += ["", "| arch | MACs | params | stand-alone val top-1 (seeds) | "
              + " | ".join(f"inherited top-1 / loss ({n})" for n in result["supernets"]) + " |",
              "|---|---|---|---|" + "---|" * len(result["supernets"])]
    for i, arch in enumerate(result["archs"]):
        seeds = " / ".join(f"{100 * v:.1f}" for v in arch["standalone"].values())
        inherited = " | ".join(f"{100 * s['inherited'][i]:.1f} / {s['inherited_loss'][i]:.3f}"
                               for s in result["supernets"].values())
        lines.append(f"| {arch['name']} | {human(arch['macs'])} | {human(arch['params'])} | {seeds} | {inherited} |")
    if result["seed_gap_mean"] is not None:
        lines += ["", f"Mean gap between two seeds of one arch: {100 * result['seed_gap_mean']:.2f} points."]
    return "\n".join(lines) + "\n"


def biggest_under(space, budget: int, seed: int, pool: int = 20000) -> Arch:
    """The arch with the most MACs under the budget among a fixed uniform pool."""
    rng = np.random.default_rng([seed, 17])
    best, best_macs = None, -1
    for _ in range(pool):
        arch = space.sample(rng)
        macs = arch_cost(arch, space)[0]
        if best_macs < macs <= budget:
            best, best_macs = arch, macs
    return best


def search_study(args) -> None:
    checkpoint = next(iter(supernet_checkpoints(args).values()))
    space = load_space(args.space)
    budget = parse_count(args.flops, "--flops")
    population = max(2, args.evaluations // 5)
    evolution = dict(population=population, generations=args.evaluations // population, topk=population // 2,
                     mutations=population // 2, crossovers=population // 2)
    random = dict(population=args.evaluations, generations=1, topk=1, mutations=0, crossovers=0)
    searches = {  # each evaluates args.evaluations subnets
        "evolution": dict(evolution, fitness="top1"), "evolution (loss)": dict(evolution, fitness="loss"),
        "random": dict(random, fitness="top1"),
    }
    strategies = [*searches, "random (loss)"]
    rows = []
    for seed in range(args.search_seeds):
        for name, settings in searches.items():
            out = Path(args.out) / "search" / f"{name.replace(' (loss)', '-loss')}_s{seed}"
            found = run_evolution(EvolveConfig(supernet=str(checkpoint), flops=budget, seed=seed, out=str(out),
                                               holdout=args.search_holdout or args.holdout, **settings), quiet)
            winners = {name: found.best}
            if name == "random":  # the same candidates ranked by their loss (ties: fewer MACs, then the hash)
                winners["random (loss)"] = min(found.rows, key=lambda c: (c.loss, c.macs, c.arch.hash))
            rows += [{"strategy": n, "seed": seed, "arch": c.arch, "inherited": c.top1, "inherited_loss": c.loss}
                     for n, c in winners.items()]
        rows.append({"strategy": "biggest under budget", "seed": seed, "arch": biggest_under(space, budget, seed),
                     "inherited": None, "inherited_loss": None})
    for row in rows:  # the recipe is one (seed 0), so an arch found by several strategies is trained once
        arch = row["arch"]
        row["macs"] = arch_cost(arch, space)[0]
        row["standalone"] = standalone_top1(args, arch, f"search_{arch.hash}", 0)
    summary = {}
    for name in (*strategies, "biggest under budget"):
        mine = [r["standalone"] for r in rows if r["strategy"] == name]
        summary[name] = {"mean": float(np.mean(mine)), "values": mine}
    result = {"budget": budget, "evaluations": args.evaluations, "summary": summary, "command": " ".join(sys.argv),
              "rows": [{**r, "arch": r["arch"].to_dict(), "hash": r["arch"].hash} for r in rows]}
    atomic_write(Path(args.out) / "search.json", json.dumps(result, indent=2).encode())
    table = Table(title=f"search strategies at {args.evaluations} evaluations, budget {human(budget)} MACs")
    for column in ("strategy", "stand-alone top-1 per seed", "mean"):
        table.add_column(column)
    lines = ["| strategy | stand-alone val top-1 per seed | mean |", "|---|---|---|"]
    for name, s in summary.items():
        per_seed = " / ".join(f"{100 * v:.1f}" for v in s["values"])
        table.add_row(name, per_seed, f"{100 * s['mean']:.2f}%")
        lines.append(f"| {name} | {per_seed} | {100 * s['mean']:.2f}% |")
    lines += ["", "| strategy | seed | winner | MACs | inherited top-1 | inherited loss | stand-alone val top-1 |",
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        inherited = "-" if row["inherited"] is None else f"{100 * row['inherited']:.1f}"
        loss = "-" if row["inherited_loss"] is None else f"{row['inherited_loss']:.3f}"
        lines.append(f"| {row['strategy']} | {row['seed']} | {row['arch'].hash} | {human(row['macs'])} | {inherited} | "
                     f"{loss} | {100 * row['standalone']:.1f} |")
    atomic_write(Path(args.out) / "search.md", ("\n".join(lines) + "\n").encode())
    Console().print(table)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (search_study if args.mode == "search" else ranking_study)(args)


if __name__ == "__main__":
    main()
