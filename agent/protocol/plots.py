"""The run's curves: the series read from history.json and samples.json, and their PNGs.

The series are pure Python (the agent, the watcher and the report share them); matplotlib is
imported only inside `render`, so a box or a Lambda without the `plots` extra never loads it
(`available()` says whether it can draw). Every PNG carries the series it drew as JSON in its
`trainctl-series` text chunk, so a reader (and a test) can check the data plotted, not pixels.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from dataclasses import dataclass, field

SERIES_CHUNK = "trainctl-series"  # the PNG text chunk holding the plotted series as JSON
HISTORY_FIELDS = ("loss", "eval_loss", "lr", "tokens_per_s")


@dataclass
class Plot:
    """One chart: a title, named series of (x, y) points, which of them go on the right axis."""

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    right: tuple[str, ...] = ()  # series drawn on a second y axis (the learning rate)
    right_label: str = ""

    def empty(self) -> bool:
        return not any(self.series.values())

    def data(self) -> dict:
        """The plotted series as JSON-able lists: what the PNG's text chunk and the report embed."""
        return {"title": self.title, "series": {k: [list(pt) for pt in v] for k, v in self.series.items()}}


def _num(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def history_series(history: list[dict], name: str, x: str = "step") -> list[tuple[float, float]]:
    """(x, value) of every history point with a finite number for `name` (NaN losses, stored as
    strings, and points without the field are left out)."""
    out = []
    for h in history:
        xv, yv = _num(h.get(x)), _num(h.get(name))
        if xv is not None and yv is not None:
            out.append((xv, yv))
    return out


def loss_curve(history: list[dict]) -> Plot:
    """Train loss, eval loss (when the run evaluated) and the learning rate on a second axis, by step."""
    plot = Plot("loss", "step", "loss", right=("lr",), right_label="learning rate")
    for name in ("loss", "eval_loss", "lr"):
        pts = history_series(history, name)
        if pts:
            plot.series[name] = pts
    return plot


def available() -> bool:
    """Whether matplotlib is importable here (the optional `plots` extra)."""
    return importlib.util.find_spec("matplotlib") is not None


def render(plot: Plot) -> bytes:
    """The chart as PNG bytes, its series in the `trainctl-series` text chunk. Needs matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # only here: the extra is optional
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax2 = ax.twinx() if any(plot.series.get(n) for n in plot.right) else None
    lines = []
    for i, (name, pts) in enumerate(plot.series.items()):
        if not pts:
            continue
        target = ax2 if name in plot.right and ax2 is not None else ax
        xs, ys = zip(*pts, strict=True)
        style = "--" if name in plot.right else "-"
        lines += target.plot(xs, ys, style, color=f"C{i}", marker="o" if len(pts) < 30 else None, markersize=3,
                             label=name)  # one colour cycle across both axes: lr never looks like loss
    ax.set_title(plot.title)
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    ax.grid(alpha=0.3)
    if ax2 is not None:
        ax2.set_ylabel(plot.right_label)
    if lines:
        ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={SERIES_CHUNK: json.dumps(plot.data())})
    return buf.getvalue()


def loss_curve_png(history: list[dict]) -> bytes | None:
    """The loss-curve PNG of a run's history, or None when it logged no loss or cannot draw here."""
    plot = loss_curve(history)
    if plot.empty() or not plot.series.get("loss") or not available():
        return None
    return render(plot)
