"""Are the margins active? The share of rows inside the gradient penalty's indicators along training, per method.

The gradient penalty acts on ID rows with E(x) < m_in and on auxiliary rows with E(x) > m_out; the energy-margin
hinge (paper Eq. 5) is non-zero on the complement. Every method logs the share of each group inside the penalty's
indicators against the same margins (:func:`greg_ood.losses.margin_stats`). If almost no row is inside, the
regularizer has nothing to act on; if every row is, the margins do not select. This table reads those shares and the
energy percentiles from the training logs, so that a reader can judge the margins
from training data alone (never from the OOD test sets).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from .names import arch_key, arch_name, method_key, method_name

#: training-log column -> what the table calls it
_SHARES = {"active_frac_id": "ID rows with E < m_in", "active_frac_aux": "aux rows with E > m_out"}
_END_PERCENTILES = {"energy_id_p50": "ID E p50", "energy_id_p95": "ID E p95",
                    "energy_aux_p5": "aux E p5", "energy_aux_p50": "aux E p50"}


def _pct(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{100 * v:.1f}"


def _num(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.1f}"


def _per_run(t: pd.DataFrame, col: str) -> tuple[float, float, float]:
    """(first logged value, mean over the logged steps, last logged value) of one run's column; NaN when absent."""
    v = t.sort_values("step")[col].dropna() if col in t.columns else pd.Series(dtype=float)
    if v.empty:
        return (np.nan, np.nan, np.nan)
    return (float(v.iloc[0]), float(v.mean()), float(v.iloc[-1]))


def margin_table(curves: pd.DataFrame, margins: Mapping[str, tuple[float, float]], *, suite: str) -> pd.DataFrame:
    """One row per (architecture, method) of the main group: the margins (m_in, m_out) the runs used, the shares of
    ID / auxiliary rows inside the indicators at the first logged step, averaged over the logged steps and at the last
    one (each the mean over seeds), and the ID / auxiliary energy percentiles of the last logged step (median over
    seeds).

    ``curves`` is :func:`greg_ood.report.loading.load_train_curves`' frame; ``margins`` maps each experiment to its
    ``(m_in, m_out)``. Raises ``ValueError`` when no main-group run logged the shares."""
    main = curves[curves["group"] == "main"]
    if main.empty or not set(_SHARES) & set(main.columns):
        raise ValueError(f"margin_table({suite}): no main-group training log has the columns {sorted(_SHARES)}")
    rows = []
    for (arch, method), g in main.groupby(["arch", "method"], sort=False):
        runs = dict(tuple(g.groupby("experiment")))
        used = sorted({margins[e] for e in runs if e in margins})
        row = {"Architecture": arch_name(arch), "Method": method_name(method), "n": str(len(runs)),
               "m_in / m_out": "; ".join(f"{a:g} / {b:g}" for a, b in used) or "n/a"}
        for col, label in _SHARES.items():
            per_run = np.array([_per_run(t, col) for t in runs.values()])
            first, mean, last = (np.nan,) * 3 if np.isnan(per_run).all() else np.nanmean(per_run, axis=0)
            row.update({f"{label}, first step %": _pct(first), f"{label}, mean %": _pct(mean),
                        f"{label}, last step %": _pct(last)})
        for col, label in _END_PERCENTILES.items():
            ends = [_per_run(t, col)[2] for t in runs.values()]
            ends = [e for e in ends if np.isfinite(e)]
            row[f"{label}, last step"] = _num(float(np.median(ends))) if ends else "n/a"
        rows.append((arch_key(arch), method_key(method), row))
    t = pd.DataFrame([r for _, _, r in sorted(rows, key=lambda x: (x[0], x[1]))])
    t.attrs["caption"] = (
        f"{suite}: are the energy margins active? From the training logs (training batches only; no OOD test data). "
        "Energy E(x) = −T·logsumexp(f(x)/T), low = ID. Shares in % of the rows of a logged training batch inside the "
        "penalty's indicators (ID: E < m_in; auxiliary: E > m_out), measured for every method against its margins "
        "(for methods without a margin loss, against the suite's); first logged step, mean over the logged steps and "
        "last logged step, each the mean over seeds. Energy percentiles of the last logged batch, median over seeds. "
        "n = seeds.")
    return t
