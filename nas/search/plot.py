"""OUT/search.png: every evaluated candidate's fitness (inherited top-1, or inherited loss) against its MACs,
coloured by generation, with the budget line, the Pareto front and the best candidate. Drawn on a bare Agg
figure: no pyplot state, no GUI."""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nas.search.candidates import Candidate, pareto_front
from nas.search.fitness_kinds import FITNESS_NAMES
from nas.units import human


def plot_search(rows: list[Candidate], budget_macs: int | None, title: str) -> bytes:
    """The PNG bytes of the plot; `rows` best first (rows[0] is marked as the best)."""
    figure = Figure(figsize=(7.5, 5), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    by_loss = rows[0].fitness == "loss"

    def y(c: Candidate) -> float:
        return c.loss if by_loss else 100 * c.top1

    macs = [c.macs for c in rows]
    points = ax.scatter(macs, [y(c) for c in rows], c=[c.generation for c in rows], cmap="viridis", s=16,
                        alpha=0.8, linewidths=0)
    figure.colorbar(points, ax=ax, label="generation", ticks=MaxNLocator(integer=True))
    front = pareto_front(rows)
    ax.step([c.macs for c in front], [y(c) for c in front], where="post", color="tab:red", lw=1.2,
            label=f"Pareto front ({len(front)})")
    best = rows[0]
    best_text = f"loss {best.loss:.4f}" if by_loss else f"{100 * best.top1:.2f}%"
    ax.scatter([best.macs], [y(best)], marker="*", s=180, color="tab:red", edgecolors="black", zorder=3,
               label=f"best: {best_text} at {human(best.macs)} MACs")
    if budget_macs is not None:
        ax.axvline(budget_macs, color="black", ls="--", lw=1, label=f"budget {human(budget_macs)} MACs")
    if max(macs) > 20 * min(macs):
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(lambda x, _: human(x))
    ax.set_xlabel("MACs per image")
    unit = " (lower is better)" if by_loss else " (%)"
    ax.set_ylabel(f"{FITNESS_NAMES[rows[0].fitness]} on the held-out split{unit}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if by_loss else "lower right", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
