"""Training figures from the per-run training logs: the paper's Figure 3 measured (‖∇ₓE‖ on ID and auxiliary
rows along training) and the loss terms, each as mean ± band over seeds, one colour per method.

Rows where a column is empty (e.g. the epoch-end rows, which hold only the ID test accuracy) are skipped for that
column, never drawn as 0.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from .plotting import figure, grid, hide_unused, log_ticks, mean_band, save, suptitle

#: the monitor: true mean ‖∇ₓE(x)‖₂ on the step's ID and auxiliary rows, logged for every method (eval-mode BN)
GRADNORM_PANELS = (("monitor_gradnorm_id", r"$\|\nabla_x E(x)\|_2$ on ID rows"),
                   ("monitor_gradnorm_aux", r"$\|\nabla_x E(x)\|_2$ on auxiliary rows"))
_LOSS_PANELS = (("total", "total loss"), ("ce", "cross-entropy"), ("energy", "energy-margin loss"),
                ("oe", "OE loss"), ("abs", "absent-class loss"), ("grad", "gradient penalty (value)"),
                ("active_frac", "fraction of rows inside the penalty's indicators"),
                ("gradnorm_id", r"penalty's $\|\nabla_x E\|$, active ID rows"),
                ("gradnorm_aux", r"penalty's $\|\nabla_x E\|$, active auxiliary rows"),
                ("id_test_acc", "ID test accuracy (epoch ends)"))
_NOT_PLOTTED = {"step", "epoch", "lr", "seed", "lambda_grad"} | {c for c, _ in GRADNORM_PANELS}


def _draw(ax, curves: pd.DataFrame, col: str, label_col: str, styles: Mapping[str, dict]) -> list:
    """Mean ± std band over seeds per label; returns the plotted means (for the axis scale)."""
    drawn = []
    for k, (lab, g) in enumerate(curves.groupby(label_col, sort=False)):
        x, m, sd, n = mean_band(g["step"], g[col])
        if not len(x):
            continue
        st = {"color": f"C{k}", "ls": "-", **styles.get(lab, {})}
        sparse = len(x) <= 3
        ax.plot(x, m, lw=1.4, marker="o" if sparse else None, ms=4, label=f"{lab} (n = {int(n.max())})", **st)
        if (n > 1).any():
            ax.fill_between(x, m - sd, m + sd, color=st["color"], alpha=0.18, lw=0)
        drawn.append(m)
    return drawn


def _panels(curves: pd.DataFrame, panels: Sequence[tuple[str, str]], path: os.PathLike | str, label_col: str,
            styles: Mapping[str, dict], title: str, log_if_wide: bool) -> Path:
    wanted = [c for c, _ in panels]
    panels = [(c, t) for c, t in panels if c in curves.columns and curves[c].notna().any()]
    if not panels:
        raise ValueError(f"no values to plot in the training logs (looked for {wanted})")
    fig, axes = figure(*grid(len(panels)), w=4.6, h=3.6)
    for ax, (c, t) in zip(axes, panels):
        drawn = _draw(ax, curves, c, label_col, styles)
        vals = pd.concat([pd.Series(m) for m in drawn]) if drawn else pd.Series(dtype=float)
        vals = vals[vals > 0]
        if log_if_wide and len(vals) and vals.max() / vals.min() > 30:
            ax.set_yscale("log")
            log_ticks(ax.yaxis)
        ax.set(title=t, xlabel="training step")
        ax.legend(fontsize=7)
    hide_unused(axes, len(panels))
    suptitle(fig, title, fontsize=9)
    return save(fig, path)


def plot_gradnorm(curves: pd.DataFrame, path: os.PathLike | str, *, label_col: str = "label",
                  styles: Optional[Mapping[str, dict]] = None,
                  title: str = "Input-gradient norm along training") -> Path:
    """The paper's Figure 3, measured: ``monitor_gradnorm_id`` and ``monitor_gradnorm_aux`` against the step, one
    line per ``label_col`` value (a method; ``styles``: its ``color``/``ls``), mean over seeds with a ± 1 std band.
    ``curves``: long frame with ``step``, ``seed``, the label and the monitor columns
    (:func:`greg_ood.report.loading.load_train_curves`)."""
    return _panels(curves, GRADNORM_PANELS, path, label_col, styles or {},
                   f"{title}\nmean over seeds, band ± 1 std; gradient w.r.t. the normalised input; "
                   f"E = energy (low = ID); measured on each logged step's batch", log_if_wide=True)


def plot_training_curves(curves: pd.DataFrame, path: os.PathLike | str, *, label_col: str = "label",
                         styles: Optional[Mapping[str, dict]] = None, title: str = "Training curves") -> Path:
    """Loss terms, the penalty's active-row statistics, the ID test accuracy at epoch ends and any other numeric
    column of the logs, one panel each, mean over seeds with a ± 1 std band per ``label_col`` value."""
    known = {c for c, _ in _LOSS_PANELS}
    extra = [(c, c) for c in curves.select_dtypes("number").columns if c not in known | _NOT_PLOTTED]
    return _panels(curves, list(_LOSS_PANELS) + extra, path, label_col, styles or {},
                   f"{title}\nmean over seeds, band ± 1 std", log_if_wide=False)
