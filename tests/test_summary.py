"""The end of a run: the summary `make mini` / `make fmnist` print (claims with verdicts, each method's headline,
where things are), and the two means of the claims and main tables (natural-image sets and all sets), with known
answers on hand-made results and on the committed `mini` report files."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import test_report as TR
from greg_ood.cli import summary as SUM
from greg_ood.report.claims import claims_table
from greg_ood.report.loading import load_results
from greg_ood.report.tables import main_table

REPO = Path(__file__).resolve().parent.parent
SETS = ["fmnist_near", "digits", "gaussian_noise"]


# ------------------------------------------------------------------------------------- the natural-image mean
def _three_set_docs():
    """Energy and GReg on 2 seeds; per-set FPR95 (near, digits, noise): Energy 0.40, 0.20, 0.00 on both seeds;
    GReg 0.30, 0.10, 0.90 (seed 0) and 0.30, 0.10, 0.60 (seed 1). Natural mean: Energy 30 %, GReg 20 %;
    all-set mean: Energy 20 %, GReg 43.33 / 33.33 %."""
    docs = []
    for s, noise in enumerate((0.90, 0.60)):
        docs.append(TR.metrics_doc(method="energy", seed=s, sets=SETS, lambda_grad=0.0,
                                   per_set_fpr={"fmnist_near": 0.40, "digits": 0.20, "gaussian_noise": 0.0}))
        docs.append(TR.metrics_doc(method="greg", seed=s, sets=SETS,
                                   per_set_fpr={"fmnist_near": 0.30, "digits": 0.10, "gaussian_noise": noise}))
    return docs


def test_main_table_shows_natural_and_all_set_means_labelled(tmp_path):
    df = load_results(TR.write(tmp_path, _three_set_docs()))
    t = main_table(df, suite="mini", score="energy", natural=["fmnist_near", "digits"])
    greg, energy = t.loc[("Small CNN", "GReg")], t.loc[("Small CNN", "Energy")]
    assert greg[("Mean, natural-image sets", "FPR95 ↓")] == "20.00 ± 0.00"
    assert energy[("Mean, natural-image sets", "FPR95 ↓")] == "30.00 ± 0.00"
    assert greg[("Mean, all sets", "FPR95 ↓")] == "38.33 ± 7.07"  # (43.33 + 33.33) / 2; std of the two
    assert energy[("Mean, all sets", "FPR95 ↓")] == "20.00 ± 0.00"
    assert greg[("", "ID acc. ↑")] == "90.00 ± 0.00"  # ID accuracy once, from the all-set rows
    cap = t.attrs["caption"]
    assert "natural-image OOD sets (Fashion-MNIST 6–9, Digits)" in cap and "adding Gaussian noise" in cap
    assert "declared in params.yaml" in cap
    # without kinds, or when every set is natural, one mean as before
    plain = main_table(df, suite="mini", score="energy")
    assert ("Mean", "FPR95 ↓") in plain.columns and ("Mean, all sets", "FPR95 ↓") not in plain.columns
    every = main_table(df, suite="mini", score="energy", natural=SETS)
    assert ("Mean", "FPR95 ↓") in every.columns


def test_claims_give_a_verdict_for_each_mean(tmp_path):
    df = load_results(TR.write(tmp_path, _three_set_docs()))
    t = claims_table(df, suite="mini", score="energy", grad_pairs=[], natural=["fmnist_near", "digits"])
    c1 = {r["set"]: r for r in t[t["claim"] == "C1"].to_dict("records")}
    assert list(c1) == ["Fashion-MNIST 6–9", "Mean, natural-image sets", "Mean, all sets"]
    nat, every = c1["Mean, natural-image sets"], c1["Mean, all sets"]
    assert nat["mean"] == pytest.approx(-10.0) and nat["verdict"] == "supported"  # -10 points on both seeds
    assert every["mean"] == pytest.approx((23.333333 + 13.333333) / 2) and every["verdict"] == "inconclusive"
    assert "kind is declared in params.yaml" in t.attrs["caption"]


def test_committed_params_declare_every_ood_set_kind():
    """Every OOD set of every suite says what it is; the noise sets are the generated ones."""
    import yaml
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, s in raw["suites"].items():
        for o in s["data"]["ood"]:
            assert o.get("kind") in ("natural", "noise"), (name, o["name"])
            assert o.get("distance") in ("near", "far"), (name, o["name"])
            assert (o["kind"] == "noise") == o["dataset"].endswith("_noise"), (name, o["name"])


def test_committed_claims_tables_show_both_means_with_verdicts():
    for suite in ("mini", "fmnist"):
        text = (REPO / "reports" / suite / "claims_readme.md").read_text()
        for label in ("Mean, natural-image sets", "Mean, all sets"):
            rows = [r for r in text.splitlines() if f"FPR95, {label} |" in r]
            assert len(rows) == 4, (suite, label)  # C1, C2 (OE, POEM), C4
            assert all(re.search(r"\| (supported|contradicted|inconclusive) \|$", r) for r in rows)
        assert "declared in params.yaml" in text.splitlines()[0]


# ------------------------------------------------------------------------------------------------ the summary
def test_summary_of_the_committed_mini_report():
    text = SUM.summary_text("mini", REPO)
    lines = text.splitlines()
    assert lines[0] == "== mini: what the runs say =="
    # C4 on the headline set: -3.50 [-5.05, -1.95], supported (reports/mini/claims.md)
    c4 = lines.index("  C4 Energy-based sampling (GReg+) lowers FPR95 vs GReg (Δ = GReg+ − GReg, Small CNN)")
    assert re.fullmatch(r" +FPR95, Fashion-MNIST 6–9 +-3\.50 \[-5\.05, -1\.95\] +supported", lines[c4 + 1])
    assert sum(bool(re.search(r"(supported|contradicted|inconclusive)$", x)) for x in lines) == 17
    energy = next(x for x in lines if re.match(r" +Small CNN +Energy ", x))
    assert energy.split()[3:] == ["3", "60.71", "±", "0.73", "81.85", "±", "0.85", "88.59", "±", "0.46"]
    assert "on Fashion-MNIST 6–9 (headline)" in text
    for where in ("reports/mini/summary.md", "reports/mini/figures/", "make plots SUITE=mini", "make mlflow-ui",
                  "experiment greg-ood/mini"):
        assert where in text


def test_summary_cli_names_a_missing_report(tmp_path):
    r = subprocess.run([sys.executable, "-m", "greg_ood.cli.summary", "--suite", "mini", "--root", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"error: {tmp_path}/reports/mini/claims.csv: not found; run the report stage")
    assert len(r.stderr.strip().splitlines()) == 1


def test_make_mini_and_fmnist_end_with_the_summary():
    make = (REPO / "Makefile").read_text()
    for suite in ("mini", "fmnist"):
        recipe = re.search(rf"^{suite}:.*\n((?:\t.*\n)+)", make, re.M).group(1).rstrip("\n").splitlines()
        assert recipe[-1].strip() == f"@$(BIN)/python -m greg_ood.cli.summary --suite {suite}"


def test_report_stage_writes_both_means_from_the_declared_kinds(tmp_path):
    """build_suite_report (what stages/report.py runs) with the kinds params.yaml declares: main and claims tables
    with both means; with every set declared natural, one mean as before."""
    from greg_ood.report.suite import build_suite_report

    files = TR.write(tmp_path, _three_set_docs())
    kinds = {"fmnist_near": "natural", "digits": "natural", "gaussian_noise": "noise"}
    build_suite_report(suite="mini", metrics_files=files, paper_csv=None, out_dir=tmp_path / "r", kinds=kinds)
    main = (tmp_path / "r" / "main.md").read_text()
    claims = (tmp_path / "r" / "claims_readme.md").read_text()
    assert "| Mean, natural-image sets FPR95 ↓ |" in main and "| Mean, all sets FPR95 ↓ |" in main
    assert "| FPR95, Mean, natural-image sets | -10.00 [-10.00, -10.00] | 2/2 | supported |" in claims
    build_suite_report(suite="mini", metrics_files=files, paper_csv=None, out_dir=tmp_path / "n",
                       kinds={k: "natural" for k in kinds})
    assert "| Mean FPR95 ↓ |" in (tmp_path / "n" / "main.md").read_text()
    assert "natural-image" not in (tmp_path / "n" / "claims_readme.md").read_text()
