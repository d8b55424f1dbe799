"""Figures of the certify stage's arrays: per-sample ‖∇ₓE‖₂ and the first-order radius
min(ε, |γ − E(x)| / ‖∇ₓE(x)‖₂) (``docs/method.md §2.6``), an estimate from the local gradient, not a certificate.

:func:`plot_certify_runs` puts several models (Energy and GReg) on the same axes; :func:`plot_certify` draws one model
(the certify stage's per-model figure).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .names import set_name
from .plotting import figure, log_ticks, save, suptitle

_STYLES = ("-", "--", ":", "-.")


@dataclass
class CertifyRun:
    """One model's certify arrays: ``grad_norms`` and ``radii`` keyed by set (``id`` = ID test set), the energy
    threshold ``gamma`` and the radius cap ``eps`` (None = no cap)."""
    label: str
    grad_norms: Mapping[str, np.ndarray]
    radii: Mapping[str, np.ndarray]
    gamma: Optional[float] = None
    eps: Optional[float] = None
    color: Optional[tuple] = field(default=None, repr=False)


def _positive_sorted(v) -> np.ndarray:
    v = np.asarray(v, float).ravel()
    return np.sort(v[np.isfinite(v) & (v > 0)])


def plot_certify_runs(runs: Sequence[CertifyRun], path: os.PathLike | str, *, sets: Optional[Sequence[str]] = None,
                      title: str = "Input-gradient norms and first-order radii") -> Path:
    """Three panels, every run on the same axes (colour = run, line style = set): the CDF of ‖∇ₓE‖₂, the fraction
    of samples whose radius is ≥ r, and the median radius per set for every set. ``sets`` (default: all) picks the
    sets drawn as lines. The title states γ and the radius cap of each run; radii of 0 (points at γ) cannot be
    drawn on the log axis and are counted in the legend."""
    if not runs:
        raise ValueError("plot_certify_runs: no runs")
    all_sets = list(dict.fromkeys(s for r in runs for s in list(r.grad_norms) + list(r.radii)))
    line_sets = [s for s in (sets or all_sets) if s in all_sets]
    fig, axes = figure(1, 3, w=4.6, h=3.8)
    for k, run in enumerate(runs):
        color = run.color or f"C{k}"
        for j, s in enumerate(line_sets):
            style = _STYLES[j % len(_STYLES)]
            g = _positive_sorted(run.grad_norms.get(s, []))
            if g.size:
                axes[0].plot(g, np.arange(1, g.size + 1) / g.size, color=color, ls=style,
                             label=f"{run.label}, {set_name(s)} (median {np.median(g):.3g})")
            raw = np.asarray(run.radii.get(s, []), float).ravel()
            r = _positive_sorted(raw)
            if r.size:
                zeros = int(np.isfinite(raw).sum() - r.size)
                axes[1].plot(r, 1 - np.arange(r.size) / raw.size, color=color, ls=style,
                             label=f"{run.label}, {set_name(s)}" + (f" ({zeros} at 0)" if zeros else ""))
    caps = sorted({run.eps for run in runs if run.eps is not None})
    for c in caps:
        axes[1].axvline(c, color="0.4", lw=0.8, ls=":")
    axes[0].set_xscale("log")
    log_ticks(axes[0].xaxis)
    axes[0].set(title=r"CDF of $\|\nabla_x E(x)\|_2$", xlabel=r"$\|\nabla_x E\|_2$ (normalised input)",
                ylabel="fraction of samples ≤ x")
    axes[1].set_xscale("log")
    log_ticks(axes[1].xaxis)
    axes[1].set(title=r"radius $\min(\varepsilon, |\gamma - E| / \|\nabla_x E\|)$",
                xlabel="radius r (L2, normalised input)", ylabel="fraction of samples with radius ≥ r")
    _median_bars(axes[2], runs, all_sets)
    for ax in axes[:2]:
        ax.legend(fontsize=6)
    stated = "; ".join(f"{run.label}: γ = {run.gamma:.3g}" if run.gamma is not None else f"{run.label}: γ not given"
                       for run in runs)
    cap = f"radius cap ε = {', '.join(f'{c:g}' for c in caps)} (dotted)" if caps else "no radius cap"
    suptitle(fig, f"{title}\n{stated}; {cap}; γ = energy threshold keeping 95 % of ID test data; first-order "
                 f"estimate, not a certificate", fontsize=9)
    return save(fig, path)


def _median_bars(ax, runs: Sequence[CertifyRun], sets: Sequence[str]) -> None:
    """Grouped bars: median radius per set (x) and run (colour); log y when the medians span over a decade."""
    width = 0.8 / len(runs)
    x = np.arange(len(sets))
    meds = []
    for k, run in enumerate(runs):
        m = [float(np.median(run.radii[s])) if s in run.radii and len(run.radii[s]) else np.nan for s in sets]
        meds += [v for v in m if np.isfinite(v) and v > 0]
        ax.bar(x + (k - (len(runs) - 1) / 2) * width, m, width, color=run.color or f"C{k}", label=run.label)
    if meds and max(meds) / min(meds) > 10:
        ax.set_yscale("log")
        log_ticks(ax.yaxis)
    ax.set_xticks(x, [set_name(s) for s in sets], rotation=35, ha="right", fontsize=7)
    ax.set(title="median radius per set", ylabel="median radius (L2, normalised input)")
    ax.legend(fontsize=7)


def plot_certify(grad_norms: Mapping[str, np.ndarray], radii: Mapping[str, np.ndarray], path: os.PathLike | str, *,
                 title: str = "Input-gradient norms and first-order radii", gamma: Optional[float] = None,
                 eps: Optional[float] = None, label: str = "model") -> Path:
    """One model's figure (:func:`plot_certify_runs` with a single run, every set drawn)."""
    return plot_certify_runs([CertifyRun(label, grad_norms, radii, gamma, eps)], path, title=title)
