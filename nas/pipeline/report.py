"""OUT/report.md and OUT/report.html of a finished pipeline run, from the files its stages wrote (nothing is
measured here). The report is built once as blocks (headings, paragraphs, tables, images, code), then written as
Markdown (images as files beside it) and as one self-contained HTML page (images as base64 data URIs)."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import platform
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nas.atomic_files import atomic_write
from nas.export.exported_model import read_meta
from nas.pipeline import baselines
from nas.pipeline.options import CONFIG_FILE
from nas.pipeline.stages import EVAL_FILE, FINAL_EVAL, LATENCY_FILE, STAGES_FILE, Layout
from nas.run_folders import PIPELINE_REPORT, SEARCH_SUMMARY
from nas.search.fitness_kinds import FITNESS_BEFORE, FITNESS_NAMES
from nas.units import human, percent
from search_spaces.presets import PRESETS_SPACE, preset_names

REPORT_MD, REPORT_HTML, CURVE_FILE = "report.md", PIPELINE_REPORT, "training_curve.png"
SECTIONS = ("What was run", "Supernet training", "Search", "Found arch against baselines", "Reuse the model")
ROLES = {"found": "found by the search", "biggest": "biggest under the budget"}
VERSIONS = ("vit-nas", "torch", "timm", "optuna", "numpy")


@dataclass
class Compared:
    """One row of the comparison table."""
    name: str
    role: str
    arch: str
    macs: int
    params: int
    inherited: float  # top-1 of the inherited weights on the held-out train images (the search's fitness)
    retrained: float  # val top-1 after retraining
    latency_ms: float


def write_report(out: Path, command: str) -> list[Compared]:
    """Write OUT/report.md (with OUT/training_curve.png) and then OUT/report.html; the compared rows."""
    facts = _Facts(Layout(out))
    curve = training_curve(facts.metrics, facts.num_classes)
    atomic_write(out / CURVE_FILE, curve)
    blocks = _blocks(facts, command, curve)
    atomic_write(out / REPORT_MD, to_markdown(blocks).encode())
    atomic_write(out / REPORT_HTML, to_html(blocks, f"nas pipeline: {out}").encode())
    return facts.compared


class _Facts:
    """What the stages wrote, read once."""

    def __init__(self, paths: Layout):
        self.paths = paths
        self.cfg = yaml.safe_load((paths.out / CONFIG_FILE).read_text())
        self.stages = json.loads((paths.out / STAGES_FILE).read_text())
        self.train_cfg = yaml.safe_load((paths.supernet / "config.yaml").read_text())
        self.final_eval = {row["subnet"]: row for row in json.loads((paths.supernet / FINAL_EVAL).read_text())}
        self.metrics = [json.loads(line) for line in (paths.supernet / "metrics.jsonl").read_text().splitlines()
                        if line.strip()]
        with (paths.search / "candidates.csv").open(newline="") as f:
            self.candidates = list(csv.DictReader(f))
        self.fitness = json.loads((paths.search / SEARCH_SUMMARY).read_text()).get("fitness", FITNESS_BEFORE)
        self.found_meta = read_meta(paths.model)
        self.eval = json.loads((paths.out / EVAL_FILE).read_text())
        self.num_classes = self.found_meta["num_classes"]
        compared = baselines.read_compared(paths.archs)
        self.found_is_biggest = compared["found_is_biggest"]
        latency = json.loads((paths.out / LATENCY_FILE).read_text())
        self.load_before, self.cpus = latency.get("load_before"), latency.get("cpus")
        self.retrain_cfg = yaml.safe_load((paths.retrain / "found" / "config.yaml").read_text())
        self.val_images = read_meta(paths.retrain / "found" / "model")["measured"]["images"]
        self.compared = []
        for name, arch in compared["archs"].items():
            meta = read_meta(paths.export_of(name))
            retrained = json.loads((paths.retrain / name / FINAL_EVAL).read_text())
            self.compared.append(Compared(name, ROLES.get(name, f"random under the budget ({name})"), arch,
                                          meta["macs"], meta["params"], meta["inherited_top1"], retrained["top1"],
                                          latency["archs"][name]["median_ms"]))
        self.threads = latency["archs"]["found"]["threads"]
        self.latency_runs = latency["archs"]["found"]["runs"]


# ------------------------------------------------------------------------------------------------------ content


def _budget(cfg: dict) -> str:
    parts = []
    if cfg.get("flops"):
        parts.append(f"{human(cfg['flops'])} MACs")
    if cfg.get("params"):
        parts.append(f"{human(cfg['params'])} params")
    return " and ".join(parts)


def _seconds(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}" if minutes else f"{seconds:.1f} s"


def _blocks(facts: _Facts, command: str, curve: bytes) -> list[tuple]:
    cfg, paths = facts.cfg, facts.paths
    chance = 100 / facts.num_classes
    found = facts.compared[0]
    blocks: list[tuple] = [
        ("h1", f"nas pipeline: {cfg['space']} on {cfg['data']}, budget {_budget(cfg)}"),
        ("p", f"Run folder `{paths.out}`, report written "
              f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `{command}`. {_verdict(facts)}"),
    ]
    blocks += _what_was_run(facts)
    blocks += _training(facts, curve)
    blocks += _search(facts)
    blocks += [("h2", SECTIONS[3]), ("p", _recipe(facts)), ("table", *_comparison_table(facts, chance)),
               ("p", f"Chance level: {chance:.1f}% (100 / {facts.num_classes} classes). {_verdict(facts)}"),
               ("p", _presets_note(facts.found_meta["space"]))]
    blocks += _reuse(facts, found, command)
    return blocks


def _presets_note(space: str) -> str:
    if space == PRESETS_SPACE:
        return (f"Published presets: not retrained by the pipeline (each is a 224-px model); `nas retrain --preset "
                f"NAME` trains one with this run's data to compare ({', '.join(preset_names())}; docs/presets.md).")
    return (f"Published presets: space `{space}` has none (the presets are archs of {PRESETS_SPACE}), so none are "
            f"compared.")


def _what_was_run(facts: _Facts) -> list[tuple]:
    cfg, train = facts.cfg, facts.train_cfg
    versions = ", ".join(f"{name} {_version(name)}" for name in VERSIONS) + f", python {platform.python_version()}"
    device = facts.found_meta["measured"]["device"]
    load = f"; load average {facts.load_before:.2f} before the latency runs" if facts.load_before is not None else ""
    rows = [
        ("space", f"`{cfg['space']}` (space hash {facts.found_meta['space_hash'][:12]})"),
        ("data", f"`{cfg['data']}`, {facts.num_classes} classes; {train['holdout']} train images held out of "
                 f"training for the search, {facts.val_images} val images for the final figures"),
        ("budget", _budget(cfg) + " per image"),
        ("seed", f"{cfg['seed']} (supernet training, search, random baselines, retraining)"),
        ("device", f"{device}, {_n(cfg['threads'], 'torch thread')} on {_n(facts.cpus, 'CPU')}{load}"),
        ("versions", versions),
    ]
    stage_rows, total = [], 0.0
    for name, entry in facts.stages.items():
        total += entry["seconds"]
        stage_rows.append((name, _seconds(entry["seconds"]), str(entry["runs"])))
    stage_rows.append(("**total**", f"**{_seconds(total)}**", ""))
    return [("h2", SECTIONS[0]), ("table", ("", ""), rows),
            ("p", "Wall time per stage (added up over the runs of a stage that was interrupted and resumed; a "
                  "run killed outright is not counted):"),
            ("table", ("stage", "wall time", "runs"), stage_rows),
            ("p", f"The options of the run: `{facts.paths.out / CONFIG_FILE}`; those of each training stage in full: "
                  f"its folder's `config.yaml`.")]


def _training(facts: _Facts, curve: bytes) -> list[tuple]:
    train = facts.train_cfg
    steps = facts.metrics[-1]["step"] if facts.metrics else 0
    largest, smallest = facts.final_eval.get("largest"), facts.final_eval.get("smallest")
    text = (f"SPOS, sampler `{train['sampler']}`, {_n(train['epochs'], 'epoch')} ({steps:,} steps at batch "
            f"{train['batch_size']}), lr {train['lr']:g}. Loss of the sampled subnets per logged window; the dashed "
            f"line is the loss of a uniform guess (ln {facts.num_classes} = {math.log(facts.num_classes):.2f}).")
    if largest and smallest:
        text += (f" Inherited val top-1 at the end: largest subnet {percent(largest['top1'])} "
                 f"({human(largest['macs'])} MACs), smallest {percent(smallest['top1'])} "
                 f"({human(smallest['macs'])} MACs).")
    return [("h2", SECTIONS[1]), ("img", "supernet training loss", CURVE_FILE, curve), ("p", text)]


def _search(facts: _Facts) -> list[tuple]:
    cfg, meta, ev = facts.cfg, facts.found_meta, facts.eval
    generations = len({row["generation"] for row in facts.candidates})
    evolve = cfg["stages"].get("evolve", {})
    found = facts.compared[0]
    if ev.get("difference") == 0:
        check = "`nas eval` of its export reproduces it exactly"
    elif ev.get("difference") is not None:
        check = f"`nas eval` of its export differs by {100 * ev['difference']:+.2f} points"
    else:
        check = f"`nas eval` of its export measured {percent(ev['top1'])}"
    text = (f"Evolution (SPOS) under {_budget(cfg)}: {_n(len(facts.candidates), 'candidate')} in "
            f"{_n(generations, 'generation')} (population {evolve.get('population', '-')}, "
            f"{evolve.get('mutations', '-')} mutated and {evolve.get('crossovers', '-')} crossed-over children per "
            f"generation); fitness: {FITNESS_NAMES[facts.fitness]} on "
            f"{meta['measured']['images']} held-out train images. Found arch "
            f"`{found.arch}`: {percent(found.inherited)} at {human(found.macs)} MACs; {check} "
            f"({ev.get('images')} images).")
    png = (facts.paths.search / "search.png").read_bytes()
    caption = f"search: {FITNESS_NAMES[facts.fitness]} against MACs"
    return [("h2", SECTIONS[2]), ("img", caption, "search/search.png", png), ("p", text)]


def _recipe(facts: _Facts) -> str:
    cfg, rt = facts.cfg, facts.retrain_cfg
    start = ("fine-tuned from its inherited supernet weights (`nas retrain --init` of its export)"
             if cfg["retrain_from"] == "inherited" else "trained from scratch (random initial weights)")
    biggest = ("" if facts.found_is_biggest else "the biggest arch under the budget, i.e. the candidate of most MACs "
               "among those the search evaluated (all within the budget; the biggest of the whole space under it is a "
               "knapsack problem), and ")
    randoms = sum(c.name.startswith("random") for c in facts.compared)
    return (f"The found arch is compared with {biggest}{_n(randoms, 'random arch')} within the budget (uniform genes, "
            f"seed {cfg['seed']}). Every compared arch was retrained with the same recipe: {start}, "
            f"{_n(rt['epochs'], 'epoch')}, lr {rt['lr']:g}, batch {rt['batch_size']}, seed {rt['seed']}, the "
            f"{rt['holdout']} held-out images left out. Inherited top-1: on the "
            f"{facts.found_meta['measured']['images']} held-out train images the search ranked on; retrained top-1: on "
            f"the {facts.val_images} val images. Latency: the exported model on the CPU, batch 1, median of "
            f"{facts.latency_runs} timed runs after a warm-up, {_n(facts.threads, 'thread')}.")


def _comparison_table(facts: _Facts, chance: float) -> tuple[tuple, list[tuple]]:
    header = ("arch", "role", "MACs", "params", "inherited top-1", "retrained top-1", "CPU latency")
    rows = [(f"`{c.arch}`", c.role, human(c.macs), human(c.params), percent(c.inherited), percent(c.retrained),
             f"{c.latency_ms:.2f} ms") for c in facts.compared]
    rows.append(("chance", "a uniform guess", "", "", f"{chance:.2f}%", f"{chance:.2f}%", ""))
    return header, rows


def _verdict(facts: _Facts) -> str:
    found, others = facts.compared[0], facts.compared[1:]
    randoms = [c for c in others if c.name.startswith("random")]
    beaten = sum(found.retrained > c.retrained for c in randoms)
    tail = f" It beats {beaten} of the {_n(len(randoms), 'random arch')} under the budget." if randoms else ""
    if facts.found_is_biggest:
        return (f"The found arch is itself the biggest arch under the budget that the search saw, so there is no "
                f"separate biggest-under-budget baseline; retrained, it reaches {percent(found.retrained)}.{tail}")
    biggest = next(c for c in others if c.name == "biggest")
    difference = 100 * (found.retrained - biggest.retrained)
    verb = "**beats**" if difference > 0 else "**does not beat**"
    return (f"After retraining, the found arch {verb} the biggest arch under the budget: {percent(found.retrained)} "
            f"against {percent(biggest.retrained)} val top-1 ({difference:+.2f} points; one val image is "
            f"{100 / facts.val_images:.2f} points).{tail}")


def _reuse(facts: _Facts, found: Compared, command: str) -> list[tuple]:
    paths, classes = facts.paths, facts.num_classes
    retrained = paths.retrain / "found" / "model"
    python = (f'import timm\nimport nas  # noqa: F401  registers "nas_vit" with timm\n\n'
              f'# the found arch with its retrained weights ({percent(found.retrained)} val top-1)\n'
              f'model = timm.create_model("nas_vit", arch="{retrained / "arch.yaml"}", num_classes={classes},\n'
              f'                          checkpoint_path="{retrained / "model.safetensors"}").eval()\n'
              f'# its inherited supernet weights ({percent(found.inherited)} on the held-out images) instead:\n'
              f'inherited = timm.create_model("nas_vit", arch="{paths.model / "arch.yaml"}", num_classes={classes},\n'
              f'                              checkpoint_path="{paths.model / "model.safetensors"}").eval()')
    holdout = facts.train_cfg["holdout"]
    shell = "\n".join([
        "# the retrained model's val top-1 again", f"nas eval {retrained}",
        "# the export reproduces the inherited top-1 on the held-out images; then the val images",
        f"nas eval {paths.model}", f"nas eval {paths.model} --split val",
        "# fine-tune it for longer",
        f"nas retrain --init {paths.model} --holdout {holdout} --epochs 30 --out {paths.out / 'retrain-longer'}",
        "# this run again: every finished stage is skipped", command])
    return [("h2", SECTIONS[4]), ("p", "From the folder the pipeline ran in, with timm (docs/export.md):"),
            ("code", "python", python), ("code", "bash", shell)]


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def training_curve(metrics: list[dict], num_classes: int) -> bytes:
    """PNG of the training loss against the step, with the loss of a uniform guess (ln K) for reference."""
    figure = Figure(figsize=(7.5, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], lw=1.2, label="training loss")
    ax.axhline(math.log(num_classes), color="black", ls="--", lw=1, label=f"uniform guess (ln {num_classes})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (label-smoothed cross-entropy)")
    ax.set_title("supernet training: loss of the sampled subnets", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------------ writers

def to_markdown(blocks: list[tuple]) -> str:
    parts = []
    for kind, *content in blocks:
        if kind == "h1":
            parts.append(f"# {content[0]}")
        elif kind == "h2":
            parts.append(f"## {content[0]}")
        elif kind == "p":
            parts.append(content[0])
        elif kind == "table":
            header, rows = content
            lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            parts.append("\n".join(lines))
        elif kind == "img":
            alt, path, _ = content
            parts.append(f"![{alt}]({path})")
        elif kind == "code":
            language, text = content
            parts.append(f"```{language}\n{text}\n```")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """The Markdown of a paragraph or cell (`code`, **bold**) as HTML, escaped."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
th{background:#f3f3f3}code,pre{background:#f6f6f6}pre{padding:.8rem;overflow-x:auto}img{max-width:100%}"""


def to_html(blocks: list[tuple], title: str) -> str:
    """One self-contained page: no external source or link, images as data URIs."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>"]
    for kind, *content in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{_inline(content[0])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(content[0])}</p>")
        elif kind == "table":
            header, rows = content
            head = "".join(f"<th>{_inline(cell)}</th>" for cell in header)
            body = "".join("<tr>" + "".join(f"<td>{_inline(cell)}</td>" for cell in row) + "</tr>" for row in rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            alt, _, png = content
            parts.append(f'<p><img alt="{html.escape(alt)}" '
                         f'src="data:image/png;base64,{base64.b64encode(png).decode()}"></p>')
        elif kind == "code":
            parts.append(f"<pre><code>{html.escape(content[1], quote=False)}</code></pre>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)
