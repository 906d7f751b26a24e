"""`ctl report <run-id>`: one self-contained HTML page about a run, read from the store.

Outcome, cause, duration, cost, config and timings (from `ctl status`'s data), then plots over
time of loss / eval loss / lr (history.json), tokens per second (history.json) and GPU
utilisation and memory / host RAM / disk free (samples.json, when the agent sampled). The PNGs are
inline (base64), so the file can be mailed or attached as it is; the plotted series are embedded
as JSON (`<script id="trainctl-series">`) beside them, so what was drawn can be checked. It works
for a finished or a running run of any trainer: it draws what the store has now.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field

from agent.protocol import plots
from agent.protocol import records as p
from agent.protocol.durations import fmt_duration
from agent.protocol.runstore import RunStore

GIB = 1024 ** 3


@dataclass
class Report:
    """What the page shows: the status data, the run's config and its plots."""

    run_id: str
    status: dict
    config: dict
    timings: list[tuple[str, str]]
    plots: list[plots.Plot] = field(default_factory=list)
    pngs: dict[str, bytes] = field(default_factory=dict)  # plot title -> PNG (empty without matplotlib)


def _rel(pts: list[tuple[float, float]], t0: float | None) -> list[tuple[float, float]]:
    """Time points as minutes since the run started (`t0`), so every chart shares its x axis."""
    return [(round((t - t0) / 60.0, 4) if t0 else t, v) for t, v in pts]


def history_plots(history: list[dict], t0: float | None) -> list[plots.Plot]:
    """Loss / eval loss / lr by step, and tokens per second over time, from history.json."""
    out = [plots.loss_curve(history)]
    tps = plots.history_series(history, "tokens_per_s", x="ts")
    out.append(plots.Plot("tokens per second", "minutes", "tokens/s", {"tokens_per_s": _rel(tps, t0)}))
    return out


def sample_series(samples: dict | None, name: str, scale: float = 1.0) -> list[tuple[float, float]]:
    """(ts, value / scale) of one column of samples.json, None gaps left out."""
    if not samples:
        return []
    ts, vals = samples.get("ts") or [], samples.get(name) or []
    return [(t, v / scale) for t, v in zip(ts, vals, strict=False)
            if isinstance(t, int | float) and isinstance(v, int | float)]


def sample_plots(samples: dict | None, t0: float | None) -> list[plots.Plot]:
    """GPU utilisation and memory, host RAM and swap, disk free over time, from samples.json."""
    def s(name, scale=1.0):
        return _rel(sample_series(samples, name, scale), t0)
    return [
        plots.Plot("GPU utilisation", "minutes", "%", {"gpu_util_percent": s("gpu_util_percent")}),
        plots.Plot("GPU memory", "minutes", "GiB", {"gpu_mem_used_gib": s("gpu_mem_used_mib", 1024.0)}),
        plots.Plot("host RAM", "minutes", "GiB", {"ram_used_gib": s("ram_used_bytes", GIB),
                                                   "swap_used_gib": s("swap_used_bytes", GIB)}),
        plots.Plot("disk free", "minutes", "GiB", {"disk_free_gib": s("disk_free_bytes", GIB)}),
    ]


def timings(status: dict, history: list[dict], hb: p.Heartbeat | None) -> list[tuple[str, str]]:
    """When it started and ended, how long it ran, and its pace (the agent's learned cadence)."""
    end = (status.get("complete") or status.get("error") or {}).get("ts")
    dur = (status.get("complete") or status.get("error") or {}).get("duration_s")
    rows = [("created", p.iso(status.get("created")) or "-"), ("ended", p.iso(end) or "still running"),
            ("duration", fmt_duration(dur) if dur is not None else "-")]
    if history:
        rows.append(("first logged step", p.iso(history[0].get("ts")) or "-"))
        rows.append(("last logged step", f"{history[-1].get('step')} at {p.iso(history[-1].get('ts')) or '-'}"))
    cad = hb.cadence if hb and hb.cadence else {}
    for k in ("step_p50_s", "step_p95_s"):
        if isinstance(cad.get(k), int | float):
            rows.append((k.replace("_", " "), f"{cad[k]:.3g}s"))
    return rows


def build(rs: RunStore, run_id: str, status: dict, render: bool = True) -> Report:
    """Read the run from the store and draw its plots (PNGs only when matplotlib is importable)."""
    md = rs.read_metadata(run_id)
    history = rs.read_history(run_id)
    samples = rs.store.get_json(rs.k(run_id, p.SAMPLES))
    t0 = md.created if md else (history[0].get("ts") if history else None)
    rep = Report(run_id, status, md.config if md else {}, timings(status, history, rs.read_heartbeat(run_id)))
    rep.plots = [pl for pl in history_plots(history, t0) + sample_plots(samples, t0) if not pl.empty()]
    if render and plots.available():
        rep.pngs = {pl.title: plots.render(pl) for pl in rep.plots}
    return rep


def warnings_of(rs: RunStore, run_id: str, md: p.Metadata | None, phase: str | None,
                settings=None) -> list:
    """The run's active warnings (ops.warnings) from what the store has now."""
    from ops.warnings import WarningSettings, assess_warnings

    ws = getattr(settings, "warnings", None) or WarningSettings()
    samples = rs.store.get_json(rs.k(run_id, p.SAMPLES))
    return assess_warnings(samples, rs.read_history(run_id), md.config if md else {}, phase == "training", ws)


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def summary_rows(st: dict) -> list[tuple[str, str]]:
    """Outcome, state, cause and remediation, cost, step and loss: the page's first table."""
    err, done = st.get("error") or {}, st.get("complete") or {}
    cost = (err or done).get("cost_usd")
    rows = [("outcome", st.get("outcome") or "-"), ("state", f"{st.get('state')}: {st.get('reason') or ''}"),
            ("phase", st.get("phase") or "-"), ("cost", f"${cost:,.2f} ({(err or done).get('price_basis')})"
                                                 if isinstance(cost, int | float) else "-"),
            ("step", f"{st.get('step')} / {st.get('total_steps') or '?'}"), ("loss", p.fmt_metric(st.get("loss")))]
    if err:
        rows[2:2] = [("cause", err.get("cause", "")), ("summary", err.get("summary", "")),
                     ("remediation", err.get("remediation", ""))]
    if done:
        rows.append(("completed", done.get("reason", "")))
    rows += [(f"warning: {w['kind']}", w["text"]) for w in st.get("warnings") or []]  # a running run's (ops.warnings)
    return rows


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}"
        "pre{background:#f6f6f6;padding:.6em;overflow:auto}img{max-width:100%}")


def to_html(rep: Report) -> str:
    """The report as one HTML document: tables, inline PNGs, the plotted series as JSON."""
    title = f"trainctl report: {rep.run_id}"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<h2>Outcome</h2>", _table(summary_rows(rep.status)), "<h2>Timings</h2>", _table(rep.timings),
             "<h2>Config</h2>", f"<pre>{html.escape(json.dumps(rep.config, indent=2, sort_keys=True))}</pre>",
             "<h2>Plots</h2>"]
    if not rep.plots:
        parts.append("<p>No logged steps or samples yet.</p>")
    elif not rep.pngs:
        parts.append("<p>matplotlib is not installed here (pip install 'trainctl[plots]'): the series are below "
                     "as data only.</p>")
    for pl in rep.plots:
        if pl.title in rep.pngs:
            b64 = base64.b64encode(rep.pngs[pl.title]).decode()
            parts.append(f"<h3>{html.escape(pl.title)}</h3><img alt='{html.escape(pl.title)}' "
                         f"src='data:image/png;base64,{b64}'>")
    data = json.dumps([pl.data() for pl in rep.plots]).replace("</", "<\\/")
    parts.append(f"<script type='application/json' id='trainctl-series'>{data}</script></body></html>")
    return "\n".join(parts)
