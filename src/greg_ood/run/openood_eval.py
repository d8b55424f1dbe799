"""The OpenOOD v1.5 protocol's evaluation (sets: :mod:`greg_ood.data.openood`), run by the evaluate stage beside the
paper's when ``eval.protocols`` lists ``openood_v1_5``.

Metrics per set, from the suite's detection score (higher = ID): FPR95 in **both** conventions — OpenOOD's, with
OOD as the positive class (:func:`openood_fpr95`), and the paper's, with ID positive (``eval.fpr_rule``;
:func:`greg_ood.metrics.fpr_at_tpr`) — and AUROC (the same under either); then the unweighted mean of each over the
near-OOD and over the far-OOD sets (:func:`group_means`). The block goes into the evaluate stage's results JSON under
``protocols.openood_v1_5``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import metrics as MT
from ..data.openood import GROUPS, OPENOOD_V1_5, ProtocolSet, protocol_sets


# ----------------------------------------------------------------------------------------------------- metrics
def openood_fpr95(score_id, score_ood, tpr: float = 0.95) -> float:
    """FPR95 as OpenOOD v1.5 computes it (``openood/evaluators/metrics.py``, ``auc_and_fpr_recall``).

    OOD is the positive class with score ``-s``; the ROC curve is scikit-learn's ``roc_curve`` with its default
    ``drop_intermediate=True`` (collinear points removed), preceded by (0, 0); the result is the FPR at the **first**
    point whose TPR (fraction of OOD detected) is >= ``tpr``, i.e. the fraction of ID samples flagged OOD when 95 %
    of the OOD set is caught."""
    sid = np.asarray(score_id, dtype=np.float64).reshape(-1)
    sood = np.asarray(score_ood, dtype=np.float64).reshape(-1)
    y = np.r_[np.zeros(sid.size, dtype=np.int64), np.ones(sood.size, dtype=np.int64)]
    fpr, tpr_c, _, _ = MT._roc(y, -np.r_[sid, sood], drop_intermediate=True)
    return float(fpr[int(np.argmax(tpr_c >= tpr))])


def set_metrics(score_id, score_ood, *, fpr_rule: str = "closest") -> dict[str, float]:
    """One set's metrics: ``fpr95_ood_positive`` (OpenOOD's), ``fpr95_id_positive`` (the paper's, with ``fpr_rule``)
    and ``auroc`` — fractions."""
    return {"fpr95_ood_positive": openood_fpr95(score_id, score_ood),
            "fpr95_id_positive": MT.fpr_at_tpr(score_id, score_ood, tpr=0.95, positive="id", fpr_rule=fpr_rule),
            "auroc": MT.auroc(score_id, score_ood)}


def group_means(per_set: dict[str, dict], sets: tuple[ProtocolSet, ...]) -> dict[str, dict[str, float]]:
    """``{"near": {...}, "far": {...}}``: the unweighted mean of each metric over the group's sets (OpenOOD's
    ``nearood`` / ``farood`` rows)."""
    return {g: MT.mean_over_sets({s.name: per_set[s.name] for s in sets if s.group == g}) for g in GROUPS}


def protocol_result(score_id: np.ndarray, scores: dict[str, np.ndarray], sets: tuple[ProtocolSet, ...], *,
                    score: str, fpr_rule: str, id_accuracy: float) -> dict:
    """The ``protocols.openood_v1_5`` block of a results file from the ID scores and each set's scores."""
    per_set = {s.name: {"group": s.group, "dataset": s.dataset, "split": s.split, "count": int(len(scores[s.name])),
                        **set_metrics(score_id, scores[s.name], fpr_rule=fpr_rule)} for s in sets}
    metrics_only = {k: {m: v[m] for m in ("fpr95_ood_positive", "fpr95_id_positive", "auroc")}
                    for k, v in per_set.items()}
    return {"score": score, "id_accuracy": id_accuracy, "fpr_rule_id_positive": fpr_rule,
            "per_set": per_set, **group_means(metrics_only, sets)}


# ----------------------------------------------------------------------------------------------------- stage hook
def run_protocols(cfg, suite: str, model, sd, *, device, primary: str) -> dict:
    """``{"protocols": {name: block}}`` for every protocol of ``suites.<suite>.eval.protocols`` beyond ``paper``,
    or ``{}`` (nothing is loaded or computed then, so the paper results file stays as it was)."""
    from .. import data as D
    from .evaluation import evaluate

    s = cfg.suite(suite)
    if OPENOOD_V1_5 not in s.eval.protocols:
        return {}
    sets = protocol_sets(s.data.id.dataset)
    ddir = Path(cfg.params.project.data_dir)
    ood = {p.name: D.load_split(ddir, p.dataset, p.split) for p in sets}
    ev = s.eval.model_copy(update={"scores": [primary], "primary": primary})
    results, arrays, _ = evaluate(model, id_test=sd.id_test, ood=ood, eval_cfg=ev, mean=sd.mean, std=sd.std,
                                  device=device, primary=primary, fit_split=sd.id_train)
    block = protocol_result(arrays[primary]["id"], {k: arrays[primary][k] for k in ood}, sets, score=primary,
                            fpr_rule=s.eval.fpr_rule, id_accuracy=results["id_accuracy"])
    return {"protocols": {OPENOOD_V1_5: block}}


def aux_overlap_sets(cfg, suite: str) -> dict:
    """The protocol's test sets, named ``openood_v1_5/<set>``, for the auxiliary overlap guard of the select stage
    ({} when the suite evaluates only the paper's protocol)."""
    from .. import data as D

    s = cfg.suite(suite)
    if OPENOOD_V1_5 not in s.eval.protocols:
        return {}
    ddir = Path(cfg.params.project.data_dir)
    return {f"{OPENOOD_V1_5}/{p.name}": D.load_split(ddir, p.dataset, p.split)
            for p in protocol_sets(s.data.id.dataset)}


def mlflow_metrics(results: dict) -> dict[str, float]:
    """The near/far means of a results file's OpenOOD block as MLflow metrics (``openood_v1_5/near/auroc``, ...);
    {} without the block."""
    block = results.get("protocols", {}).get(OPENOOD_V1_5)
    if block is None:
        return {}
    return {f"{OPENOOD_V1_5}/{g}/{k}": v for g in GROUPS for k, v in block[g].items()}
