"""The pretrained (not fine-tuned) baseline: its stage and run identity, and its row in the report — first in the main
tables, absent from the claims and the paired differences (which compare fine-tuning methods on paired seeds)."""
from __future__ import annotations

from pathlib import Path

import yaml

from greg_ood import report as R
from greg_ood.run.runinfo import PRETRAINED, RunInfo, pretrained_experiment
from test_report import mini_docs, metrics_doc, write

ROOT = Path(__file__).resolve().parents[1]


def _with_baseline(tmp_path):
    base = metrics_doc(method=PRETRAINED, name=pretrained_experiment("mini", "small_cnn"), lambda_grad=None,
                       fpr=0.6, auroc=0.7, acc=0.95, extra_scores=["msp"])
    return R.load_results(write(tmp_path, mini_docs() + [base]))


def test_main_table_shows_the_pretrained_row_first(tmp_path):
    t = R.main_table(_with_baseline(tmp_path), suite="mini")
    assert [m for _, m in t.index] == ["Pretrained (no fine-tuning)", "Energy", "OE", "OE + grad", "GReg"]
    row = t.loc[("Small CNN", "Pretrained (no fine-tuning)")]
    assert row[("", "n")] == "1" and row[("Mean", "FPR95 ↓")] == "60.00" and row[("", "ID acc. ↑")] == "95.00"


def test_claims_and_paired_differences_leave_the_baseline_out(tmp_path):
    df = _with_baseline(tmp_path)
    claims = R.claims_table(df, suite="mini", score="energy", grad_pairs=[("energy", "greg")])
    assert "Pretrained" not in claims.to_string()
    paired = R.paired_differences(df, suite="mini")
    assert {m for _, m, _ in paired.index} == {"GReg"}
    without = R.paired_differences(R.load_results(write(tmp_path / "b", mini_docs())), suite="mini")
    assert paired.equals(without)


def test_pretrained_stage_and_run_identity():
    info = RunInfo("evaluate", suite="mini", method=PRETRAINED, arch="small_cnn", seed=0, group="main")
    assert info.dvc_stage == "evaluate_mini_pretrained@small_cnn"
    assert info.run_name == "pretrained · s0 · evaluate (mini, small_cnn)"
    assert "without fine-tuning" in info.description and info.identity()["method"] == "pretrained"
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate_mini_pretrained"]
    assert stage["cmd"] == "python stages/evaluate.py --suite mini --pretrained --arch ${item.arch}"
    assert "models/pretrained/mini-${item.arch}.pt" in stage["deps"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]]
    assert f"results/mini/{pretrained_experiment('mini', '${item.arch}')}.json" in outs
