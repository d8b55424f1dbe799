"""OOD detection metrics (docs/method.md §7) and aggregation over OOD sets and seeds.

Scores are "higher = more in-distribution" throughout. Values are fractions in [0, 1] (tables print percent).
Curves are computed here in NumPy (:func:`_roc`; the same definitions as scikit-learn's ``roc_curve``,
``roc_auc_score`` and ``average_precision_score``, which the tests use as the reference): importing scikit-learn
costs about a second per stage process.

FPR rules (``fpr_rule`` / ``positive``):

* ``positive="id", fpr_rule="closest"`` (default; the paper's / official code's, from OE's ``fpr_and_fdr_at_recall``):
  among the distinct score thresholds (up to the first one reaching ID recall 1), take the one whose ID recall (TPR on
  ID) is **closest** to ``tpr``; on ties, the one with the larger recall, and among equal recalls the lower threshold
  (OE scans the curve from recall 1 downwards). FPR = fraction of OOD scored at or above it.
* ``positive="id", fpr_rule="quantile"`` (DOS ``utils/metrics.py``): threshold = the ``floor(tpr * n_id)``-th largest
  ID score (at least the 1st); FPR = fraction of OOD scored **strictly** above it.
* ``positive="ood"`` (OpenOOD v1.5, pytorch-ood): OOD is the positive class with score ``-s``; FPR is read at the
  **first** threshold whose OOD TPR is >= ``tpr``: the fraction of **ID** samples flagged OOD when ``tpr`` of the OOD
  set is caught (a different quantity). ``fpr_rule`` is ignored. (All distinct thresholds are used; OpenOOD's
  ``roc_curve`` default drops collinear points, which can only matter when such a point is the first to reach ``tpr``.)

AUROC does not depend on the positive class. AUPR-In = average precision with ID positive and score s; AUPR-Out =
average precision with OOD positive and score -s.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

import numpy as np
import torch

__all__ = ["ood_metrics", "fpr_at_tpr", "auroc", "aupr_in", "aupr_out", "roc_points", "accuracy", "mean_over_sets", "mean_std_over_seeds",
           "METRIC_KEYS", "FPR_RULES"]

METRIC_KEYS = ("fpr95", "auroc", "aupr_in", "aupr_out")
FPR_RULES = ("closest", "quantile")


def _to_numpy(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy() if a.dtype in (torch.float16, torch.bfloat16) else a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected numeric scores, got dtype {arr.dtype}")
    arr = arr.astype(np.float64).reshape(-1) if arr.ndim <= 1 else None
    if arr is None:
        raise ValueError(f"{name}: expected a 1-D array of scores")
    if arr.size == 0:
        raise ValueError(f"{name}: is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def _labels_scores(score_id: np.ndarray, score_ood: np.ndarray):
    y = np.concatenate([np.ones(score_id.size, dtype=np.int64), np.zeros(score_ood.size, dtype=np.int64)])
    s = np.concatenate([score_id, score_ood])
    return y, s


def _roc(y: np.ndarray, s: np.ndarray, drop_intermediate: bool = False):
    """ROC curve of labels ``y`` (1 = positive) and scores ``s`` (higher = more positive), one point per distinct
    threshold in decreasing order, preceded by the ``(0, 0)`` point (scikit-learn's ``roc_curve`` convention).

    ``tps[k]``, ``fps[k]`` = positives / negatives scored ``>= thresholds[k]``; FPR = fps / N_neg, TPR = tps / N_pos.
    ``drop_intermediate`` drops points collinear with their neighbours (they do not change the curve's area).
    Returns ``(fpr, tpr, tps, fps)``.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), y_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_group].astype(np.float64)
    fps = (last_of_group + 1 - tps).astype(np.float64)
    if drop_intermediate and tps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps = tps[keep], fps[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    n_pos, n_neg = tps[-1], fps[-1]
    if n_pos == 0 or n_neg == 0:
        raise ValueError("scores: need at least one ID and one OOD sample")
    return fps / n_neg, tps / n_pos, tps, fps


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """AP = sum_k (R_k - R_{k-1}) * P_k over distinct thresholds in decreasing order (R_0 = 0), the step-wise
    (non-interpolated) area under the precision-recall curve (scikit-learn's ``average_precision_score``)."""
    _, rec, tps, fps = _roc(y, s)
    prec = tps[1:] / (tps[1:] + fps[1:])
    return float(np.sum(np.diff(rec) * prec))


def fpr_at_tpr(score_id, score_ood, tpr: float = 0.95, positive: str = "id", fpr_rule: str = "closest") -> float:
    """FPR at the given TPR under one of the rules described in the module docstring."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr: must be in (0, 1], got {tpr}")
    if positive not in ("id", "ood"):
        raise ValueError(f"positive: must be 'id' or 'ood', got {positive!r}")
    if fpr_rule not in FPR_RULES:
        raise ValueError(f"fpr_rule: must be one of {FPR_RULES}, got {fpr_rule!r}")
    sid, sood = _to_numpy(score_id, "score_id"), _to_numpy(score_ood, "score_ood")
    if positive == "ood":
        y, s = _labels_scores(sid, sood)
        fpr, tpr_c, _, _ = _roc(1 - y, -s)
        return float(fpr[int(np.argmax(tpr_c >= tpr))])
    if fpr_rule == "quantile":
        n_tp = max(int(math.floor(tpr * sid.size)), 1)
        th = np.sort(sid)[-n_tp]
        return float(np.mean(sood > th))
    y, s = _labels_scores(sid, sood)
    fpr, rec, _, _ = _roc(y, s)
    fpr, rec = fpr[1:], rec[1:]  # drop the (0, 0) point above the highest score
    last = int(np.argmax(rec >= rec[-1]))  # first threshold reaching full ID recall
    fpr, rec = fpr[: last + 1], rec[: last + 1]
    dist = np.abs(rec - tpr)
    cut = int(np.flatnonzero(dist == dist.min())[-1])
    return float(fpr[cut])


def auroc(score_id, score_ood) -> float:
    """Area under the ROC curve (trapezoids over every distinct threshold; ties count one half), ID = 1.
    Equals P(s_id > s_ood) + 0.5 P(s_id = s_ood); independent of the positive class."""
    y, s = _labels_scores(_to_numpy(score_id, "score_id"), _to_numpy(score_ood, "score_ood"))
    fpr, tpr, _, _ = _roc(y, s)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def aupr_in(score_id, score_ood) -> float:
    """Average precision with ID positive and the score as is (the only AUPR of the GReg code)."""
    y, s = _labels_scores(_to_numpy(score_id, "score_id"), _to_numpy(score_ood, "score_ood"))
    return _average_precision(y, s)


def aupr_out(score_id, score_ood) -> float:
    """Average precision with OOD positive and the negated score."""
    y, s = _labels_scores(_to_numpy(score_id, "score_id"), _to_numpy(score_ood, "score_ood"))
    return _average_precision(1 - y, -s)


def ood_metrics(score_id, score_ood, positive: str = "id", tpr: float = 0.95, fpr_rule: str = "closest") -> dict:
    """``{"fpr95", "auroc", "aupr_in", "aupr_out"}`` (fractions) for ID scores vs one OOD set's scores.

    ``score_*``: 1-D numpy arrays or torch tensors, higher = more in-distribution; NaN/inf raise ``ValueError``.
    ``fpr95`` is the FPR at ``tpr`` (0.95 by default) under ``positive`` / ``fpr_rule`` (module docstring).
    """
    sid, sood = _to_numpy(score_id, "score_id"), _to_numpy(score_ood, "score_ood")
    return {"fpr95": fpr_at_tpr(sid, sood, tpr=tpr, positive=positive, fpr_rule=fpr_rule),
            "auroc": auroc(sid, sood), "aupr_in": aupr_in(sid, sood), "aupr_out": aupr_out(sid, sood)}


def roc_points(score_id, score_ood, max_points: int = 200, positive: str = "id") -> list[dict]:
    """ROC curve as ``[{"fpr": .., "tpr": ..}, ...]`` with at most ``max_points`` points (first and last kept, the rest
    evenly thinned). ``positive="id"``: TPR on ID, FPR on OOD (the paper's convention); ``"ood"``: the reverse."""
    if max_points < 2:
        raise ValueError(f"max_points: must be >= 2, got {max_points}")
    sid, sood = _to_numpy(score_id, "score_id"), _to_numpy(score_ood, "score_ood")
    y, s = _labels_scores(sid, sood)
    if positive == "ood":
        y, s = 1 - y, -s
    elif positive != "id":
        raise ValueError(f"positive: must be 'id' or 'ood', got {positive!r}")
    fpr, tpr, _, _ = _roc(y, s, drop_intermediate=True)
    if fpr.size > max_points:
        keep = np.unique(np.round(np.linspace(0, fpr.size - 1, max_points)).astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return [{"fpr": float(a), "tpr": float(b)} for a, b in zip(fpr, tpr)]


def accuracy(logits, labels, num_classes: Optional[int] = None) -> float:
    """Top-1 accuracy of ``argmax logits[:, :K]`` (K = ``num_classes``, default all columns; a K+1-output DOS model's
    absent class is never a prediction)."""
    lg = torch.as_tensor(logits)
    lb = torch.as_tensor(labels).reshape(-1)
    if lg.dim() != 2:
        raise ValueError(f"logits: expected [N, C], got shape {tuple(lg.shape)}")
    if lb.numel() != lg.shape[0]:
        raise ValueError(f"labels: {lb.numel()} labels for {lg.shape[0]} rows of logits")
    if lg.shape[0] == 0:
        raise ValueError("logits: is empty")
    if num_classes is not None:
        if not 1 <= int(num_classes) <= lg.shape[1]:
            raise ValueError(f"num_classes: must be in [1, {lg.shape[1]}], got {num_classes}")
        lg = lg[:, : int(num_classes)]
    return float((lg.argmax(dim=1) == lb.to(lg.device)).float().mean())


def mean_over_sets(per_set: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted arithmetic mean of each metric over OOD sets (keys present in every set)."""
    if not per_set:
        raise ValueError("per_set: no OOD sets")
    keys = set.intersection(*(set(m) for m in per_set.values()))
    ordered = [k for k in METRIC_KEYS if k in keys] + sorted(keys - set(METRIC_KEYS))
    return {k: float(np.mean([float(m[k]) for m in per_set.values()])) for k in ordered}


def mean_std_over_seeds(values: Iterable[float]) -> tuple[float, float]:
    """``(mean, sample std with ddof = 1)`` over seeds; std = 0 for a single seed."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("values: no seeds")
    if not np.all(np.isfinite(v)):
        raise ValueError("values: contains NaN or inf")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
