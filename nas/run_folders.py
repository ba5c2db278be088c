"""The names of the files in each kind of run folder (the contract between the commands; `nas show` reads them
through `nas.commands.run_summary`), and the budget a training run suggests for its search.

    train-supernet / retrain   config.yaml, checkpoint.pt, metrics.jsonl; final_eval.json once finished
                               (retrain: also model/, the export folder of the network)
    evolve                     study.journal (default storage), candidates.csv, best.yaml, search.png, search.json
    export                     arch.yaml, model.safetensors, meta.json
"""
from __future__ import annotations


import numpy as np

from nas.cost_model import arch_cost
from nas.units import SUFFIXES
from search_spaces import load_space

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
FINAL_EVAL = "final_eval.json"  # written after the final evaluation: the training run is complete
MODEL_FOLDER = "model"  # a retrain's OUT/model: the export folder of the retrained network
ARCH_FILE, WEIGHTS_FILE, META_FILE = "arch.yaml", "model.safetensors", "meta.json"
DEFAULT_JOURNAL = "study.journal"
SEARCH_SUMMARY = "search.json"  # evolve: settings, how far it got, the best, how to resume (rewritten as it goes)
PIPELINE_CONFIG, PIPELINE_STAGES = "pipeline.yaml", "stages.json"  # nas pipeline: its options; per stage, its time
PIPELINE_REPORT = "report.html"  # written at the end of every pipeline run that gets there


def suggested_budget(space: str, draws: int = 1000, fit: float = 0.9) -> str:
    """A MACs budget for a first search of `space` (a name or YAML path): what `fit` of its random archs fit in (a
    fixed draw), to two significant digits; tight enough to matter, loose enough to leave the search a choice.
    "BUDGET" when the space cannot be loaded (a YAML file moved away)."""
    try:
        space = load_space(space)
    except ValueError:
        return "BUDGET"
    rng = np.random.default_rng(0)
    macs = float(f"{np.quantile([arch_cost(space.sample(rng), space)[0] for _ in range(draws)], fit):.2g}")
    suffix, scale = max(((s, v) for s, v in SUFFIXES.items() if v <= macs), key=lambda item: item[1])
    return f"{macs / scale:g}{suffix}"  # 16M, not human()'s 16.0M
