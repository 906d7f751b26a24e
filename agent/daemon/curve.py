"""The loss-curve PNG at the end of a run: `artifacts/loss_curve.png`, when matplotlib is here.

Drawn once, at the end of every run that logged a loss (completed, failed or interrupted), before
the marker, so whoever reads `_complete` or `_error` finds the picture beside it. It is a courtesy,
never a condition: a box without the `plots` extra, a drawing error or a store that refuses the
PUT is logged and the run ends exactly as it would have.
"""

from __future__ import annotations

import logging

from agent.protocol import plots
from agent.protocol import records as p

log = logging.getLogger("trainctl.agent")


def write_loss_curve(agent) -> bool:
    """Draw the run's history and store it as `artifacts/loss_curve.png` (once per agent). True if stored."""
    if getattr(agent, "_curve_tried", False):
        return False
    agent._curve_tried = True
    try:
        png = plots.loss_curve_png(agent.progress.history_points())
        if png is None:
            return False
        agent.rs.store.put(agent.rs.k(agent.run_id, p.LOSS_CURVE), png)
    except Exception as exc:  # noqa: BLE001 - a picture never decides how a run ends
        log.warning("loss curve: not stored (%s: %s)", type(exc).__name__, exc)
        return False
    log.info("stored the loss curve as %s", p.LOSS_CURVE)
    return True
