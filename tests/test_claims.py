"""Known-answer tests for the claims table: the statistics (t interval, bootstrap, verdict rule), their degenerate
cases, and the table built from a small synthetic suite."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import test_report as TR
from greg_ood.report import stats as S
from greg_ood.report.claims import Claim, claim_row, claims_table, format_claims, write_claims
from greg_ood.report.loading import load_results

T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824}  # t(0.975, df) from a printed table of Student's t (4 decimals)
TOL = 1e-4


# ---------------------------------------------------------------------------------------------- t interval
def test_t_interval_hand_computed():
    # d = 1, 2, 3: mean 2, s = 1, half width = t(0.975, 2) * 1 / sqrt(3)
    mean, lo, hi = S.t_interval([1.0, 2.0, 3.0])
    half = T975[2] / math.sqrt(3)
    assert mean == 2.0
    assert lo == pytest.approx(2.0 - half, abs=TOL) and hi == pytest.approx(2.0 + half, abs=TOL)
    assert lo == pytest.approx(-0.4841, abs=TOL)
    # d = -1, -2, -3, -4: mean -2.5, s = sqrt(5/3), half = t(0.975, 3) * s / 2
    mean, lo, hi = S.t_interval([-1.0, -2.0, -3.0, -4.0])
    half = T975[3] * math.sqrt(5 / 3) / 2
    assert (mean, lo, hi) == pytest.approx((-2.5, -2.5 - half, -2.5 + half), abs=TOL)
    assert hi == pytest.approx(-0.4457, abs=TOL)


def test_t_interval_degenerate_cases():
    # two seeds: d = 1, 3: s = sqrt(2), half = t(0.975, 1) * sqrt(2) / sqrt(2)
    assert S.t_interval([1.0, 3.0]) == pytest.approx((2.0, 2.0 - T975[1], 2.0 + T975[1]), abs=TOL)
    # zero variance: the interval is the point
    assert S.t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert S.t_interval([0.0, 0.0]) == (0.0, 0.0, 0.0)
    # one seed: a mean, no interval; nothing: all NaN; a NaN value: all NaN
    m, lo, hi = S.t_interval([1.5])
    assert m == 1.5 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(x) for x in S.t_interval([]))
    assert all(math.isnan(x) for x in S.t_interval([1.0, math.nan, 2.0]))


# ----------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_known_answers():
    # resample means of {1, 2, 3}: P(mean = 1) = P(mean = 3) = 1/27 > 2.5 %, so the 95 % interval is [1, 3]
    assert S.bootstrap_interval([1.0, 2.0, 3.0]) == (1.0, 3.0)
    assert S.bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)  # zero spread: the point
    assert all(math.isnan(x) for x in S.bootstrap_interval([1.0]))
    assert all(math.isnan(x) for x in S.bootstrap_interval([1.0, math.nan]))
    rng = np.random.default_rng(5)
    d = rng.normal(1.0, 1.0, 8)
    assert S.bootstrap_interval(d) == S.bootstrap_interval(d)  # fixed seed: reproducible
    lo, hi = S.bootstrap_interval(d)
    _, tlo, thi = S.t_interval(d)
    assert tlo < lo < d.mean() < hi < thi  # the percentile bootstrap is narrower than t for small n


# ----------------------------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("lo,hi,direction,threshold,expect", [
    (-3.0, -1.0, -1, 0.0, "supported"),        # lower FPR95 claimed, interval below 0
    (1.0, 3.0, -1, 0.0, "contradicted"),       # ... interval above 0
    (-1.0, 1.0, -1, 0.0, "inconclusive"),      # ... interval contains 0
    (-1.0, 0.0, -1, 0.0, "inconclusive"),      # touching 0 does not exclude it
    (0.5, 2.0, +1, 0.0, "supported"),          # larger radii claimed
    (-0.5, 0.5, +1, -1.0, "supported"),        # non-inferiority: lower bound above the -1 margin
    (-3.0, -1.5, +1, -1.0, "contradicted"),    # ... upper bound below the margin
    (-1.5, 0.2, +1, -1.0, "inconclusive"),     # ... interval contains the margin
    (math.nan, math.nan, -1, 0.0, "inconclusive"),
])
def test_verdict_rule(lo, hi, direction, threshold, expect):
    assert S.verdict(lo, hi, direction, threshold) == expect


def test_verdict_of_degenerate_samples():
    def v(d, direction=-1):
        _, lo, hi = S.t_interval(d)
        return S.verdict(lo, hi, direction)
    assert v([-2.0, -2.0, -2.0]) == "supported"       # zero variance, nonzero mean: the point decides
    assert v([2.0, 2.0, 2.0]) == "contradicted"
    assert v([0.0, 0.0, 0.0]) == "inconclusive"       # zero variance, zero mean
    assert v([-1.0]) == "inconclusive"                # one seed
    assert v([-1.0, -3.0]) == "inconclusive"          # two seeds: t(0.975, 1) = 12.7 makes the interval wide
    assert v([-1.0, math.nan, -2.0]) == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        S.verdict(0.0, 1.0, 0)
    assert S.wins([-1.0, 0.0, 2.0], -1) == 1 and S.wins([-0.5, -2.0], +1, -1.0) == 1


def test_claim_row_drops_missing_values():
    c = Claim("C1", "x", "energy", "greg", "fpr95", "mean", -1)
    r = claim_row(c, "small_cnn", {"s0": -1.0, "s1": math.nan, "s2": -3.0})
    assert r["n"] == 2 and r["mean"] == -2.0 and "1 seed(s) dropped" in r["note"]
    assert r["verdict"] == "inconclusive" and r["wins"] == 2
    r = claim_row(c, "small_cnn", {})
    assert r["n"] == 0 and r["verdict"] == "inconclusive" and math.isnan(r["mean"])


# --------------------------------------------------------------------------------------------------- table
def claims_suite(tmp_path):
    """energy/greg on 3 seeds (FPR95 greg − energy = -20 points on every seed and set; ID accuracy −0.5 points),
    oe/oe_grad on one seed, no GReg+; training logs where Energy's ‖∇ₓE‖ grows 50× faster than GReg's."""
    docs = []
    for s, (fg, fe) in enumerate([(0.10, 0.30), (0.20, 0.40), (0.30, 0.50)]):
        docs.append(TR.metrics_doc(method="greg", seed=s, fpr=fg, acc=0.905))
        docs.append(TR.metrics_doc(method="energy", seed=s, fpr=fe, acc=0.91, lambda_grad=0.0))
    docs.append(TR.metrics_doc(method="oe", fpr=0.4, lambda_grad=0.0))
    docs.append(TR.metrics_doc(method="oe_grad", fpr=0.3))
    df = load_results(TR.write(tmp_path, docs))
    logs = [TR.train_csv(tmp_path / "train" / f"mini-{m}-small_cnn-s{s}.train.csv", g)
            for m, g in (("energy", 0.5), ("greg", 0.01)) for s in range(3)]
    return df, logs


def test_claims_table_on_synthetic_suite(tmp_path):
    df, logs = claims_suite(tmp_path)
    t = claims_table(df, suite="mini", score="energy", grad_pairs=[("energy", "greg"), ("oe", "oe_grad")],
                     train_csv_files=logs, paper_csv=TR.PAPER_CSV)
    rows = {(r["claim"], r["measure"], r["set"]): r for r in t.to_dict("records")}
    c1 = rows[("C1", "FPR95", "Mean")]
    assert c1["n"] == 3 and c1["mean"] == pytest.approx(-20.0) and c1["wins"] == 3
    assert c1["verdict"] == "supported"  # zero spread, nonzero mean
    assert "ResNet-18: 11.14 → 7.90 (-3.24)" in c1["paper"]
    assert rows[("C1", "FPR95", "Fashion-MNIST 6–9")]["paper"] == "no number"
    c2 = rows[("C2", "FPR95", "Mean")]
    assert c2["n"] == 1 and c2["mean"] == pytest.approx(-10.0) and c2["verdict"] == "inconclusive"
    # C3: last logged step 200 (the epoch-end row has no monitor value): (0.01 − 0.5) · 200; along the curve:
    # the mean over steps 10…200 of (0.01 − 0.5) · step
    end = rows[("C3", "‖∇ₓE‖ at the last logged step", "ID training batches")]
    assert end["mean"] == pytest.approx(-98.0) and end["verdict"] == "supported"
    along = rows[("C3", "‖∇ₓE‖ averaged over the logged steps", "ID training batches")]
    assert along["mean"] == pytest.approx(-0.49 * 105.0)
    c4 = rows[("C4", "FPR95", "Mean")]
    assert c4["n"] == 0 and c4["verdict"] == "inconclusive" and "no seed has both GReg and GReg+" in c4["note"]
    c5 = rows[("C5", "ID accuracy", "ID test")]
    assert c5["mean"] == pytest.approx(-0.5) and c5["verdict"] == "supported" and c5["threshold"] == -1.0
    c6 = [r for r in t.to_dict("records") if r["claim"] == "C6"]
    assert c6 and all(r["verdict"] == "inconclusive" and "no certify results" in r["note"] for r in c6)
    cap = t.attrs["caption"]
    assert "never written by hand" in cap and "10,000 resamples" in cap and "seed 0" in cap


def test_claims_files(tmp_path):
    df, logs = claims_suite(tmp_path)
    t = claims_table(df, suite="mini", score="energy", grad_pairs=[("oe", "oe_grad")], train_csv_files=logs)
    paths = write_claims(t, tmp_path / "out")
    md = paths["claims.md"].read_text()
    assert "| C1 |" in md and "supported" in md and "computed from the t interval" in md
    assert r"\begin{tabular}" in paths["claims.tex"].read_text()
    short = paths["claims_readme.md"].read_text()
    assert "| C1 | GReg fine-tuning lowers FPR95 vs Energy fine-tuning | GReg − Energy | FPR95, Mean | " \
           "-20.00 [-20.00, -20.00] | 3/3 | supported |" in short
    csv = pd.read_csv(paths["claims.csv"])
    assert {"claim", "mean", "t_low", "t_high", "boot_low", "boot_high", "wins", "n", "verdict"} <= set(csv.columns)
    shown = format_claims(t)
    c1 = shown[(shown["Claim"] == "C1") & (shown["Measure"] == "FPR95, Mean")].iloc[0]
    assert c1["Per-pair Δ"] == "s0: -20.00; s1: -20.00; s2: -20.00"
    assert c1["95 % t interval"] == "[-20.00, -20.00]" and c1["Wins"] == "3/3" and c1["n"] == "3 seeds"
