"""Known-answer tests for the paper comparison (``greg_ood.report.paper``): a tiny results frame against a tiny
paper-numbers file, one case per kind of row (paper inside / outside our seed range, one seed, unknown paper value,
a method we do not implement, a method not run), and the statement written for a suite without paper numbers."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import test_report as TR
from greg_ood.report.loading import load_results
from greg_ood.report.paper import (DIFFERENCES_HEADING, NoPaperNumbers, github_anchor, paper_comparison,
                                   seed_range_check)
from greg_ood.report.suite import build_suite_report

SETS = ["textures", "svhn"]
HEAD = "table,benchmark,arch,method,ood_set,metric,value,provenance,note\n"
# greg FPR95 per seed 10 / 20 / 30 % (mean 20.00 ± 10.00); energy 30 / 40 / 50 %; oe one seed 40 %
PAPER_ROWS = [
    "t1,cifar10,resnet18,greg,mean,fpr95,25.00,S2,",      # inside [10, 30]
    "t1,cifar10,resnet18,energy_loss,mean,fpr95,11.14,S2,",  # below [30, 50]
    "t1,cifar10,resnet18,oe,mean,fpr95,40.00,S2,",        # one seed of ours
    "t1,cifar10,resnet18,greg,mean,auroc,,S2,",           # the paper's value is unknown
    "t1,cifar10,resnet18,openmix,mean,fpr95,22.24,S2,",   # a method we do not implement
    "t1,cifar10,resnet18,poem,mean,fpr95,9.00,S2,",       # implemented, not run in this suite
    "t1,cifar10,resnet18,greg,svhn,fpr95,30.00,S2,",      # per-set value, on the upper edge (inside)
    "t1,cifar10,resnet18,greg,isun,fpr95,6.20,S2,",       # a set we do not evaluate
]


def _docs():
    docs = []
    for s, (fg, fe) in enumerate([(0.10, 0.30), (0.20, 0.40), (0.30, 0.50)]):
        docs.append(TR.metrics_doc(suite="cifar10", method="greg", arch="resnet18", seed=s, fpr=fg, sets=SETS,
                                   headline=None))
        docs.append(TR.metrics_doc(suite="cifar10", method="energy", arch="resnet18", seed=s, fpr=fe, sets=SETS,
                                   headline=None, lambda_grad=0.0))
    docs.append(TR.metrics_doc(suite="cifar10", method="oe", arch="resnet18", seed=0, fpr=0.40, sets=SETS,
                               headline=None, lambda_grad=0.0))
    return docs


@pytest.fixture
def table(tmp_path):
    paper = tmp_path / "paper_numbers.csv"
    paper.write_text(HEAD + "\n".join(PAPER_ROWS) + "\n")
    return paper_comparison(load_results(TR.write(tmp_path, _docs())), paper, suite="cifar10")


def _row(t: pd.DataFrame, method: str, metric: str = "FPR95 ↓", ood_set: str = "Mean", source: str = "t1"):
    r = t[(t["Source table"] == source) & (t["Method"] == method) & (t["Metric"] == metric)
          & (t["OOD set"] == ood_set)]
    assert len(r) == 1, r
    return r.iloc[0]


def test_paper_value_inside_our_seed_range(table):
    r = _row(table, "GReg")
    assert (r["Paper"], r["Ours"], r["n"], r["Seed range"]) == ("25.00", "20.00 ± 10.00", "3", "[10.00, 30.00]")
    assert r["Δ (ours − paper)"] == "-5.00" and r["Paper in seed range"] == "yes"
    edge = _row(table, "GReg", ood_set="SVHN")  # 30.00 = our max: inside
    assert edge["Paper in seed range"] == "yes" and edge["Δ (ours − paper)"] == "-10.00"


def test_paper_value_outside_our_seed_range(table):
    r = _row(table, "Energy")
    assert (r["Ours"], r["Seed range"], r["Δ (ours − paper)"]) == ("40.00 ± 10.00", "[30.00, 50.00]", "+28.86")
    assert r["Paper in seed range"] == "no (paper below)"


def test_one_seed_gives_no_range(table):
    r = _row(table, "OE")
    assert (r["Ours"], r["n"], r["Seed range"], r["Δ (ours − paper)"]) == ("40.00", "1", "–", "+0.00")
    assert r["Paper in seed range"] == "n/a (1 seed)"


def test_unknown_paper_value_says_so(table):
    r = _row(table, "GReg", metric="AUROC ↑")
    assert r["Paper"] == "n/r" and r["Δ (ours − paper)"] == "n/a"
    assert r["Paper in seed range"] == "n/a (no paper value)" and "unknown" in r["Note"]
    assert r["Ours"] == "90.00 ± 0.00"
    # our mean AUROC of Energy is not in the paper file: a row of ours, paper value unknown
    e = _row(table, "Energy", metric="AUROC ↑", source="—")
    assert e["Paper"] == "n/r" and e["Paper in seed range"] == "n/a (no paper value)"


def test_rows_we_do_not_produce_say_why(table):
    assert _row(table, "OpenMix")["Ours"] == "not produced: OpenMix (another training method) is not implemented here"
    poem = _row(table, "POEM")
    assert poem["Ours"] == "not produced: POEM is not among this suite's methods"
    assert poem["Paper in seed range"] == "n/a (not produced)" and poem["Δ (ours − paper)"] == "n/a"
    assert _row(table, "GReg", ood_set="iSUN")["Ours"] == "not produced: OOD set iSUN is not evaluated here"


def test_every_paper_row_appears_once(table):
    assert len(table[table["Source table"] == "t1"]) == len(PAPER_ROWS)


def test_seed_range_check_cases():
    assert seed_range_check([10.0, 30.0], 10.0) == ("[10.00, 30.00]", "yes")
    assert seed_range_check([10.0, 30.0], 30.004) == ("[10.00, 30.00]", "yes")  # equal at 2 decimals
    assert seed_range_check([10.0, 30.0], 30.01) == ("[10.00, 30.00]", "no (paper above)")
    assert seed_range_check([12.0], 12.0) == ("–", "n/a (1 seed)")
    assert seed_range_check([12.0, 13.0], float("nan")) == ("[12.00, 13.00]", "n/a (no paper value)")
    assert seed_range_check([], 5.0) == ("–", "n/a (not produced)")


def test_footer_links_the_readme_differences_section(table, tmp_path):
    anchor = github_anchor(DIFFERENCES_HEADING)
    assert anchor == "differences-from-the-official-code-o4lcgreg-ood-and-why"
    readme = (TR.REPO / "README.md").read_text()
    assert f"## {DIFFERENCES_HEADING}\n" in readme
    assert f"(../../README.md#{anchor})" in table.attrs["footer"] and "3 seeds" in table.attrs["footer"]
    out = tmp_path / "rep"
    build_suite_report(suite="cifar10", metrics_files=TR.write(tmp_path, _docs()), out_dir=out,
                       paper_csv=tmp_path / "paper_numbers.csv")
    md = (out / "paper_comparison.md").read_text()
    table_end = max(i for i, ln in enumerate(md.splitlines()) if ln.startswith("|"))
    assert f"README.md#{anchor}" in "\n".join(md.splitlines()[table_end + 1:])  # the sentence is under the table
    header = next(ln for ln in md.splitlines() if ln.startswith("| Source table"))
    assert "| Seed range | Δ (ours − paper) | Paper in seed range |" in header
    csv = pd.read_csv(out / "paper_comparison.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns) == list(table.columns) and "Paper in seed range" in (out / "paper_comparison.tex"
                                                                                   ).read_text()


def test_suite_without_paper_numbers_says_so_plainly(tmp_path):
    out = tmp_path / "rep"
    got = build_suite_report(suite="mini", metrics_files=TR.write(tmp_path, TR.mini_docs()), out_dir=out,
                             paper_csv=TR.PAPER_CSV)
    assert "paper_comparison.md" in got and "paper_comparison.csv" not in got
    text = (out / "paper_comparison.md").read_text()
    assert "No paper numbers apply" in text and "|" not in text
    assert re.search(r"\* \[paper_comparison\]\(paper_comparison\.md\)\n", (out / "summary.md").read_text())
    with pytest.raises(NoPaperNumbers, match="no paper numbers for suite 'mini'"):
        paper_comparison(load_results(TR.write(tmp_path, TR.mini_docs())), TR.PAPER_CSV, suite="mini")


def test_non_numeric_paper_value_is_a_clear_error(tmp_path):
    paper = tmp_path / "p.csv"
    paper.write_text(HEAD + "t1,cifar10,resnet18,greg,mean,fpr95,about 8,S2,\n")
    with pytest.raises(ValueError, match="non-numeric value.*leave the cell empty"):
        paper_comparison(load_results(TR.write(tmp_path, _docs())), paper, suite="cifar10")


def test_footer_counts_the_methods_seeds_not_the_pretrained_baselines(tmp_path):
    """The pretrained model is evaluated once (seed 0); a suite run with seed 2 alone has 1 seed, not 2."""
    paper = tmp_path / "paper_numbers.csv"
    paper.write_text(HEAD + "\n".join(PAPER_ROWS) + "\n")
    docs = [TR.metrics_doc(suite="cifar10", method="greg", arch="resnet18", seed=2, fpr=0.1, sets=SETS, headline=None),
            TR.metrics_doc(suite="cifar10", method="pretrained", arch="resnet18", seed=0, fpr=0.5, sets=SETS,
                           headline=None, lambda_grad=0.0)]
    t = paper_comparison(load_results(TR.write(tmp_path, docs)), paper, suite="cifar10")
    assert "1 seed here" in t.attrs["footer"], t.attrs["footer"]
