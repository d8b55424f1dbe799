"""Detection figures: ROC curves (one line per run, or mean ± band over the seeds of a method) and score
histograms, ID against each OOD set."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .names import score_name, set_name
from .plotting import conv_title, figure, grid, hide_unused, save, suptitle

_FPR_GRID = np.linspace(0.0, 1.0, 501)


def _read_roc(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    doc = json.loads(path.read_text())
    if not isinstance(doc, Mapping):
        raise ValueError(f"{path}: expected an object {{set: [{{fpr, tpr}}, ...]}}")
    out = {}
    for s, pts in doc.items():
        try:
            out[s] = (np.array([p["fpr"] for p in pts], float), np.array([p["tpr"] for p in pts], float))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: set {s!r} needs a list of {{'fpr', 'tpr'}} points ({e})") from e
    return out


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, grid_fpr: np.ndarray = _FPR_GRID) -> np.ndarray:
    """The ROC curve read at fixed FPR values: for each x, the highest TPR among the points with FPR ≤ x (the step
    curve the thresholds trace; 0 left of the first point), so curves of different seeds can be averaged."""
    o = np.lexsort((tpr, fpr))
    f, t = np.asarray(fpr, float)[o], np.maximum.accumulate(np.asarray(tpr, float)[o])
    i = np.searchsorted(f, grid_fpr, side="right") - 1
    return np.where(i >= 0, t[np.clip(i, 0, None)], 0.0)


def plot_roc(roc_json_files: Sequence[os.PathLike | str], path: os.PathLike | str, *,
             labels: Optional[Sequence[str]] = None, styles: Optional[Mapping[str, dict]] = None,
             sets: Optional[Sequence[str]] = None, convention: Optional[str | Mapping] = None,
             title: str = "ROC curves (primary score)") -> Path:
    """ROC curves, one panel per OOD set (``sets``, default: every set in the files). Files that share a label (the
    seeds of one method) are drawn as one line, the mean TPR at each FPR, with a band of ± 1 std over the files; a
    label of its own gives a plain line; ``styles`` gives matplotlib ``color``/``ls`` per label. Label default: the
    experiment directory name. Axes follow the file (ID positive by default: x = OOD accepted as ID, y = ID recall);
    a dotted line marks TPR = 0.95."""
    files = [Path(f) for f in roc_json_files]
    if not files:
        raise ValueError("plot_roc: no roc.json files")
    labels = list(labels) if labels is not None else [f.parent.name or f.stem for f in files]
    curves = [_read_roc(f) for f in files]
    have = list(dict.fromkeys(s for c in curves for s in c))
    sets = [s for s in (sets or have) if s in have]
    pos = "ID" if convention is None or "positive=ood" not in str(convention) else "OOD"
    neg = "OOD" if pos == "ID" else "ID"
    fig, axes = figure(*grid(len(sets)), w=4.6 if len(sets) > 1 else 6.0, h=4.4)
    for ax, s in zip(axes, sets):
        for k, lab in enumerate(dict.fromkeys(labels)):
            ys = np.array([tpr_at(*c[s]) for c, lb in zip(curves, labels) if lb == lab and s in c])
            if not len(ys):
                continue
            st = {"color": f"C{k}", "ls": "-", **(styles or {}).get(lab, {})}
            color = st["color"]
            m = ys.mean(axis=0)
            n = len(ys)
            ax.plot(_FPR_GRID, m, lw=1.4, label=lab + (f" (mean of {n})" if n > 1 else ""), **st)
            if n > 1:
                sd = ys.std(axis=0, ddof=1)
                ax.fill_between(_FPR_GRID, np.clip(m - sd, 0, 1), np.clip(m + sd, 0, 1), color=color, alpha=0.18,
                                lw=0)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.axhline(0.95, color="0.5", lw=0.8, ls=":")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), title=set_name(s),
               xlabel=f"FPR ({neg} accepted as {pos})", ylabel=f"TPR ({pos} recall)")
        ax.legend(fontsize=7, loc="lower right")
    hide_unused(axes, len(sets))
    suptitle(fig, f"{title}\n{conv_title(convention)}; dotted: TPR 0.95; bands: ± 1 std over seeds", fontsize=9)
    return save(fig, path)


def plot_score_histograms(npz_file: os.PathLike | str, path: os.PathLike | str, score: str = "energy", *,
                          title: Optional[str] = None) -> Path:
    """Histograms of ``<score>/id`` against every ``<score>/<set>`` in a scores npz (one panel per OOD set;
    shared, data-driven bin edges; densities)."""
    f = Path(npz_file)
    with np.load(f) as z:
        keys = [k for k in z.files if k.startswith(f"{score}/")]
        if f"{score}/id" not in keys:
            raise ValueError(f"{f}: no '{score}/id' array (have {sorted(z.files)[:8]})")
        arrs = {k.split("/", 1)[1]: np.asarray(z[k], dtype=float).ravel() for k in keys}
    idv = arrs.pop("id")
    idv = idv[np.isfinite(idv)]
    if not arrs:
        raise ValueError(f"{f}: no OOD sets for score {score!r}")
    fig, axes = figure(*grid(len(arrs)))
    for ax, (s, v) in zip(axes, arrs.items()):
        v = v[np.isfinite(v)]
        both = np.concatenate([idv, v])
        edges = np.histogram_bin_edges(both, bins="auto") if both.size and np.ptp(both) > 0 else 10
        if not np.isscalar(edges) and len(edges) > 101:
            edges = np.linspace(both.min(), both.max(), 101)
        ax.hist(idv, bins=edges, density=True, alpha=0.55, label=f"ID test (n={idv.size})")
        ax.hist(v, bins=edges, density=True, alpha=0.55, label=f"{set_name(s)} (n={v.size})")
        ax.set(title=f"ID vs {set_name(s)}", xlabel=f"{score_name(score)} score (higher = ID)",
               ylabel="density")
        ax.legend(fontsize=7)
    hide_unused(axes, len(arrs))
    fig.suptitle(title or f"{f.stem}: {score_name(score)} score distributions (higher = ID)",
                 fontsize=10)
    return save(fig, path)

