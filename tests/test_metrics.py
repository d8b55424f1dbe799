"""Known-answer tests of greg_ood.metrics in the three FPR conventions, and agreement with scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from greg_ood import metrics as MT


def _oe_fpr_reference(score_id, score_ood, level=0.95):
    """Independent loop implementation of OE's ``fpr_and_fdr_at_recall`` (ID positive, closest recall; ties resolved
    like its reversed scan: larger recall first, then the lower threshold)."""
    s = np.concatenate([score_id, score_ood])
    y = np.concatenate([np.ones(len(score_id)), np.zeros(len(score_ood))])
    best = None
    for t in sorted(set(s.tolist()), reverse=True):  # descending thresholds
        tp = float(np.sum(y[s >= t]))
        fp = float(np.sum(s >= t) - tp)
        rec = tp / len(score_id)
        key = (abs(rec - level), -rec, -fp)  # closest, then larger recall, then lower threshold (more FP)
        if best is None or key < best[0]:
            best = (key, fp)
        if rec == 1.0:
            break
    return best[1] / len(score_ood)


def test_perfect_and_reversed_separation_all_conventions():
    sid, sood = np.arange(10, 30, dtype=float), np.arange(0, 10, dtype=float)
    for pos, rule in (("id", "closest"), ("id", "quantile"), ("ood", "closest")):
        m = MT.ood_metrics(sid, sood, positive=pos, fpr_rule=rule)
        assert m == pytest.approx({"fpr95": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}, abs=1e-12)
        r = MT.ood_metrics(sood + 100, sood, positive=pos, fpr_rule=rule)
        assert r["fpr95"] == 0.0
        m = MT.ood_metrics(sood, sid, positive=pos, fpr_rule=rule)
        assert m["fpr95"] == 1.0 and m["auroc"] == 0.0


def test_all_ties():
    sid, sood = np.zeros(20), np.zeros(30)
    m = MT.ood_metrics(sid, sood)
    assert m["auroc"] == 0.5 and m["fpr95"] == 1.0  # the only threshold takes everything
    assert abs(m["aupr_in"] - 20 / 50) < 1e-12 and abs(m["aupr_out"] - 30 / 50) < 1e-12
    assert MT.fpr_at_tpr(sid, sood, fpr_rule="quantile") == 0.0  # DOS counts OOD strictly above the threshold
    assert MT.fpr_at_tpr(sid, sood, positive="ood") == 1.0


def test_95_percent_boundary_cases():
    sid = np.arange(1, 21, dtype=float)  # recall moves in steps of 0.05
    sood = np.array([1.5, 2.5, 100.0])
    # thresholds 2 and 1.5 both give ID recall exactly 0.95; OE's scan takes the lower one (1.5): all 3 OOD above
    assert MT.fpr_at_tpr(sid, sood, fpr_rule="closest") == 1.0
    assert MT.fpr_at_tpr(sid, sood, fpr_rule="closest") == _oe_fpr_reference(sid, sood)
    # DOS: threshold = 19th largest ID score = 2; OOD strictly above: 2.5, 100
    assert abs(MT.fpr_at_tpr(sid, sood, fpr_rule="quantile") - 2 / 3) < 1e-12
    # 50 ID scores: recall 0.94 and 0.96 are (nearly) equidistant from 0.95; the float comparison decides as in OE
    sid50 = np.arange(50, dtype=float)
    sood50 = np.arange(50, dtype=float) + 0.5
    assert MT.fpr_at_tpr(sid50, sood50) == _oe_fpr_reference(sid50, sood50)
    # OOD positive: 20 OOD scores; catching 19 of them needs s <= 18.5 -> one of four ID scores (10) is flagged
    sood = np.arange(20, dtype=float) + 0.5
    sid = np.array([10.0, 30.0, 40.0, 50.0])
    assert MT.fpr_at_tpr(sid, sood, positive="ood") == 0.25


@pytest.mark.parametrize("seed", range(6))
def test_agreement_with_direct_computations(seed):
    rng = np.random.RandomState(seed)
    sid = np.round(rng.randn(200) + 1.0, 1)  # rounding creates ties
    sood = np.round(rng.randn(137), 1)
    m = MT.ood_metrics(sid, sood)
    y = np.r_[np.ones(200), np.zeros(137)]
    s = np.r_[sid, sood]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert m["fpr95"] == pytest.approx(_oe_fpr_reference(sid, sood), abs=1e-12)
    # DOS quantile rule, directly
    th = np.sort(sid)[-int(np.floor(0.95 * 200))]
    assert MT.fpr_at_tpr(sid, sood, fpr_rule="quantile") == pytest.approx(np.mean(sood > th))
    # OpenOOD: smallest ID fraction flagged OOD among thresholds catching >= 95 % of OOD (flag: -s >= t)
    best = min(np.mean(-sid >= t) for t in np.unique(-s) if np.mean(-sood >= t) >= 0.95)
    assert MT.fpr_at_tpr(sid, sood, positive="ood") == pytest.approx(best)
    # torch input gives the same
    assert MT.ood_metrics(torch.from_numpy(sid), torch.from_numpy(sood)) == m


def test_roc_points_accuracy_and_aggregation():
    rng = np.random.RandomState(0)
    pts = MT.roc_points(rng.randn(1000) + 1, rng.randn(1000), max_points=50)
    assert 2 <= len(pts) <= 50
    assert pts[0] == {"fpr": 0.0, "tpr": 0.0} and pts[-1] == {"fpr": 1.0, "tpr": 1.0}
    assert all(a["fpr"] <= b["fpr"] and a["tpr"] <= b["tpr"] for a, b in zip(pts, pts[1:]))
    logits = torch.tensor([[2.0, 1.0, 9.0], [0.0, 3.0, 9.0], [1.0, 0.0, 9.0], [0.0, 1.0, 9.0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert MT.accuracy(logits, labels, num_classes=2) == 0.75  # the absent class (col 2) is ignored
    assert MT.accuracy(logits, labels) == 0.0
    per_set = {"a": {"fpr95": 0.1, "auroc": 0.9, "aupr_in": 0.8, "aupr_out": 0.7},
               "b": {"fpr95": 0.3, "auroc": 0.7, "aupr_in": 0.6, "aupr_out": 0.5}}
    assert MT.mean_over_sets(per_set) == pytest.approx({"fpr95": 0.2, "auroc": 0.8, "aupr_in": 0.7,
                                                        "aupr_out": 0.6})
    assert MT.mean_std_over_seeds([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert MT.mean_std_over_seeds([0.5]) == (0.5, 0.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="score_id"):
        MT.ood_metrics(np.array([0.1, np.nan]), np.array([0.0]))
    with pytest.raises(ValueError, match="score_ood"):
        MT.ood_metrics(np.array([0.1]), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="score_ood"):
        MT.ood_metrics(np.array([0.1]), np.array([]))
    with pytest.raises(ValueError, match="fpr_rule"):
        MT.ood_metrics(np.array([0.1]), np.array([0.0]), fpr_rule="first")
    with pytest.raises(ValueError, match="positive"):
        MT.ood_metrics(np.array([0.1]), np.array([0.0]), positive="both")
    with pytest.raises(ValueError, match="values"):
        MT.mean_std_over_seeds([])


@pytest.mark.parametrize("seed", range(6))
def test_numpy_curves_match_scikit_learn(seed):
    """Our NumPy ROC / AUROC / AP equal scikit-learn's on random scores with many ties, both positive classes."""
    from sklearn.metrics import roc_curve

    
    rng = np.random.default_rng(seed)
    sid = np.round(rng.normal(1.0, 1.0, 300 + seed), 1)  # rounding makes ties within and across the two groups
    sood = np.round(rng.normal(0.0, 1.0, 200 + 7 * seed), 1)
    y = np.r_[np.ones(sid.size), np.zeros(sood.size)].astype(int)
    s = np.r_[sid, sood]
    assert MT.auroc(sid, sood) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert MT.aupr_in(sid, sood) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert MT.aupr_out(sid, sood) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    for drop in (False, True):
        fpr, tpr, _, _ = MT._roc(y, s, drop_intermediate=drop)
        rf, rt, _ = roc_curve(y, s, drop_intermediate=drop)
        np.testing.assert_allclose(fpr, rf, atol=1e-12)
        np.testing.assert_allclose(tpr, rt, atol=1e-12)
