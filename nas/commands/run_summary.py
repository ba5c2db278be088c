"""What a run folder holds, summarised for `nas show` (and the resume command of a pipeline): the kind of run
(training, search, export, pipeline), how far it got, its best figures and how to carry on."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from nas.run_folders import (ARCH_FILE, CHECKPOINT, CONFIG, DEFAULT_JOURNAL, FINAL_EVAL, META_FILE, METRICS, MODEL_FOLDER,
                             PIPELINE_CONFIG, PIPELINE_REPORT, PIPELINE_STAGES, SEARCH_SUMMARY, WEIGHTS_FILE,
                             suggested_budget)
from nas.search.fitness_kinds import FITNESS_BEFORE


def summarize(folder: str | Path) -> dict:
    """{folder, kind, complete, progress, best, next, ...} of a run folder; a folder that is none but has run
    folders in it (or in its sub-folders): kind "folder of runs" with their summaries under "runs". ValueError for
    anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder" + ("" if folder.exists() else " (it does not exist)"))
    if (folder / PIPELINE_CONFIG).is_file():
        return _pipeline(folder)
    summary = _summarize_run(folder)
    if summary is not None:
        return summary
    runs = _runs_below(folder, depth=2)
    if not runs:
        raise ValueError(f"{str(folder)!r} is not a run folder of nas: it holds none of {CONFIG} or {CHECKPOINT} "
                         f"(train-supernet, retrain), {SEARCH_SUMMARY} or {DEFAULT_JOURNAL} (evolve), {META_FILE} "
                         f"(export), nor run folders")
    return {"folder": str(folder), "kind": "folder of runs", "complete": all(run["complete"] for run in runs),
            "runs": runs}


def _runs_below(folder: Path, depth: int) -> list[dict]:
    """The summaries of the run folders in `folder`, looking `depth` levels down, in name order."""
    runs = []
    for child in sorted(path for path in folder.iterdir() if path.is_dir()):
        run = _summarize_run(child)
        if run is not None:
            runs.append(run)
        elif depth > 1:
            runs += _runs_below(child, depth - 1)
    return runs


def _summarize_run(folder: Path) -> dict | None:
    if (folder / META_FILE).is_file():
        return _export(folder)
    if (folder / SEARCH_SUMMARY).is_file() or (folder / DEFAULT_JOURNAL).is_file():
        return _search(folder)
    if (folder / CONFIG).is_file() or (folder / CHECKPOINT).is_file():
        return _training(folder)
    return None


def _pipeline(folder: Path) -> dict:
    """A `nas pipeline` run folder: its stages so far, its report, and the command that continues it (the options
    recorded in pipeline.yaml, which a rerun must repeat), with the summaries of its run folders under "runs"."""
    try:
        config = yaml.safe_load((folder / PIPELINE_CONFIG).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{str(folder / PIPELINE_CONFIG)!r} cannot be read ({exc})") from None
    stages = _read_json(folder / PIPELINE_STAGES) if (folder / PIPELINE_STAGES).is_file() else {}
    report = folder / PIPELINE_REPORT
    complete = report.is_file() and bool(stages) and all(stage["finished"] for stage in stages.values())
    own = [f"--{key.replace('_', '-')} {shlex.quote(str(value))}" for key, value in config.items()
           if key != "stages" and value is not None]
    sets = [f"--set {shlex.quote(f'{stage}.{key}={value}')}" for stage, options in config.get("stages", {}).items()
            for key, value in options.items()]
    rerun = " ".join(["nas pipeline --out", shlex.quote(str(folder)), *own, *sets])
    return {"folder": str(folder), "kind": "pipeline", "complete": complete,
            "progress": {"stages": {name: stage["finished"] for name, stage in stages.items()}},
            "report": str(report) if report.is_file() else None, "runs": _runs_below(folder, depth=2),
            "next": f"open {report}" if complete else rerun}


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    return value


def _training(folder: Path) -> dict:
    config = _training_config(folder)
    kind = "retrain" if "arch" in config or "init" in config else "supernet"
    command = "retrain" if kind == "retrain" else "train-supernet"
    done, total, epoch = _steps(folder / METRICS)
    epochs = config.get("epochs")
    complete = (folder / FINAL_EVAL).is_file()
    summary = {"folder": str(folder), "kind": kind, "complete": complete,
               "progress": {"steps": done, "total_steps": total, "epoch": epoch, "epochs": epochs},
               "data": config.get("data"), "space": config.get("space"), "arch": config.get("arch"),
               "best": None}
    out = shlex.quote(str(folder))
    if not complete:
        summary["next"] = f"nas {command} --out {out} --resume"
        return summary
    result = _read_json(folder / FINAL_EVAL)
    if kind == "supernet":  # inherited val top-1 of the largest, the smallest and random subnets
        rows = result if isinstance(result, list) else []
        summary["best"] = {row["subnet"]: {"top1": row["top1"], "macs": row["macs"], "arch": row["arch"]}
                           for row in rows}
        budget = suggested_budget(config["space"]) if config.get("space") else "BUDGET"
        summary["next"] = f"nas evolve --supernet {shlex.quote(str(folder / CHECKPOINT))} --flops {budget}"
    else:
        summary["best"] = {"val top-1": {"top1": result.get("top1"), "macs": result.get("macs"),
                                         "arch": result.get("arch")}}
        summary["next"] = f"nas eval {shlex.quote(str(folder / MODEL_FOLDER))} --split val"
    return summary


def _training_config(folder: Path) -> dict:
    """config.yaml, or (missing or damaged: a kill while it was written) the copy in the checkpoint."""
    try:
        config = yaml.safe_load((folder / CONFIG).read_text())
        if isinstance(config, dict):
            return config
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        pass
    from nas.train.checkpoint import load_checkpoint  # torch: only for a folder whose config.yaml is unreadable

    return load_checkpoint(folder / CHECKPOINT).get("config", {})


def _steps(metrics: Path) -> tuple[int, int | None, int | None]:
    """(last logged step, total steps, its epoch) from metrics.jsonl; (0, None, None) before the first line."""
    last = {}
    try:
        lines = metrics.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        try:
            last = json.loads(line)
            break
        except ValueError:  # a torn last line (a kill while it was written)
            continue
    return last.get("step", 0), last.get("total_steps"), last.get("epoch")


def _search(folder: Path) -> dict:
    path = folder / SEARCH_SUMMARY
    if not path.is_file():  # the journal exists, but no candidate was evaluated yet
        return {"folder": str(folder), "kind": "search", "complete": False,
                "progress": {"evaluated": 0, "planned": None}, "best": None,
                "next": "run the same 'nas evolve' command again: it resumes the study in "
                        f"{folder / DEFAULT_JOURNAL}"}
    search = _read_json(path)
    best = search.get("best") or {}
    summary = {"folder": str(folder), "kind": "search", "complete": bool(search.get("complete")),
               "progress": {"evaluated": search.get("evaluated"), "planned": search.get("planned"),
                            "generations": search.get("generations"),
                            "generations_seen": search.get("generations_seen")},
               "strategy": search.get("strategy"), "objective": search.get("objective"),
               "fitness": search.get("fitness", FITNESS_BEFORE),
               "budget": {"macs": search.get("flops"), "params": search.get("params")}, "data": search.get("data"),
               "holdout": search.get("holdout"), "best": best}
    if summary["complete"]:
        summary["next"] = (f"nas export --supernet {shlex.quote(str(search.get('supernet')))} --arch "
                           f"{shlex.quote(str(best.get('file')))} --out {shlex.quote(str(folder / MODEL_FOLDER))}")
    else:
        summary["next"] = search.get("resume")
    return summary


def _export(folder: Path) -> dict:
    meta = _read_json(folder / META_FILE)
    missing = [name for name in (ARCH_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    measured = meta.get("measured") or {}
    retrained = meta.get("retrained") is not None
    top1 = meta.get("val_top1") if retrained else meta.get("inherited_top1")
    return {"folder": str(folder), "kind": "export", "complete": not missing, "missing": missing,
            "from": "retrain" if retrained else "supernet", "arch": meta.get("arch_hash"), "space": meta.get("space"),
            "macs": meta.get("macs"), "params": meta.get("params"),
            "best": {"val top-1" if retrained else "inherited top-1": {"top1": top1, "images": measured.get("images"),
                                                                      "split": measured.get("split"),
                                                                      "data": measured.get("data")}},
            "next": f"nas eval {shlex.quote(str(folder))}"}
