"""Stage identity: every stage's real DVC name (checked against the generated dvc.yaml), run names, metric names."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from greg_ood.run import config as C
from greg_ood.run.dvcgen import dvc_files
from greg_ood.run.runinfo import PRETRAINED, RunInfo, eval_metrics, train_metric

ROOT = Path(__file__).resolve().parents[1]


def _dvc_stage_names() -> set[str]:
    """The stage names `dvc stage list` prints, expanded from dvc.yaml's foreach/matrix with params.yaml."""
    import itertools

    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def lookup(ref: str):
        v = params
        for part in ref.strip("${}").split("."):
            v = v[part]
        return v

    names = set()
    stages = [item for f in dvc_files(ROOT) for item in yaml.safe_load(f.read_text())["stages"].items()]
    for name, st in stages:  # a group name can recur across files (train_<S>: one file per method)
        if "foreach" in st:
            names |= {f"{name}@{k}" for k in lookup(st["foreach"])}
        elif "matrix" in st:
            axes = [lookup(v) if isinstance(v, str) else v for v in st["matrix"].values()]
            names |= {f"{name}@" + "-".join(str(x) for x in combo) for combo in itertools.product(*axes)}
        else:
            names.add(name)
    return names


def test_every_stage_name_is_a_real_dvc_stage():
    cfg = C.load(ROOT / "params.yaml")
    real = _dvc_stage_names()
    s = cfg.suite("mini")
    exps = cfg.experiments("mini")
    infos = [RunInfo("download", dataset=s.data.id.dataset), RunInfo("pretrain", suite="mini", arch=s.archs[0]),
             RunInfo("select", suite="mini", arch=s.archs[0]), RunInfo("certify", suite="mini"),
             RunInfo("report", suite="mini"), RunInfo("evaluate", suite="mini", method=PRETRAINED, arch=s.archs[0],
                                                       seed=0, group="main")]
    infos += [RunInfo.of_experiment(st, e) for e in exps for st in ("train", "evaluate")]
    assert any(e.group == "ablation" for e in exps)
    missing = [i.dvc_stage for i in infos if i.dvc_stage not in real]
    assert not missing, missing
    assert RunInfo("train", suite="mini", method="greg", arch="small_cnn", seed=0).dvc_stage == \
        "train_mini@greg-small_cnn-0"
    assert infos[-1 - 2 * len(exps)].dvc_stage == "evaluate_mini_pretrained@small_cnn"


def test_dvc_target_names_the_file_of_a_stage_outside_the_root_dvc_yaml():
    """`dvc repro` finds a bare stage name only in the root dvc.yaml; the fixes the stages print must run as shown."""
    greg = RunInfo("train", suite="mini", method="greg", arch="small_cnn", seed=0)
    assert greg.dvc_target == "pipelines/train_mini-greg/dvc.yaml:train_mini@greg-small_cnn-0"  # a file per method
    abl = RunInfo("evaluate", suite="mini", method="greg", arch="small_cnn", seed=1, group="ablation", label="0.1")
    assert abl.dvc_target == "pipelines/evaluate_mini_ablation/dvc.yaml:evaluate_mini_ablation@0.1-1"
    base = RunInfo("evaluate", suite="mini", method=PRETRAINED, arch="small_cnn", seed=0, group="main")
    assert base.dvc_target == base.dvc_stage == "evaluate_mini_pretrained@small_cnn"
    assert RunInfo("pretrain", suite="mini", arch="small_cnn").dvc_target == "pretrain_mini@small_cnn"
    assert RunInfo("report", suite="mini").dvc_target == "report_mini"
    for info in (greg, abl):
        assert (ROOT / info.dvc_target.split(":")[0]).is_file()


def test_run_names_lead_with_method_and_seed():
    assert RunInfo("evaluate", suite="mini", method="greg", arch="small_cnn", seed=2).run_name == \
        "greg · s2 · evaluate (mini, small_cnn)"
    abl = RunInfo("train", suite="mini", method="greg", arch="small_cnn", seed=0, group="ablation", label="0.1")
    assert abl.run_name == "greg λ=0.1 · s0 · train (mini, small_cnn)"
    assert abl.dvc_stage == "train_mini_ablation@0.1-0"
    assert RunInfo("report", suite="mini").run_name == "report (mini)"
    assert RunInfo("download", dataset="digits").run_name == "download · digits"


@pytest.mark.parametrize("col,key", [("energy", "loss/energy_margin"), ("total", "loss/total"), ("lr", "train/lr"),
                                     ("active_frac_id", "diag/active_frac_id"),
                                     ("monitor_gradnorm_id", "diag/monitor_gradnorm_id"),
                                     ("id_test_acc", "eval/id_test_acc")])
def test_training_columns_map_to_sectioned_metric_names(col, key):
    assert train_metric(col) == key


def test_eval_metric_names():
    per = {"fpr95": 0.2, "auroc": 0.9}
    res = {"id_accuracy": 0.95, "fpr95": 0.3, "auroc": 0.8, "aupr_in": 0.7, "aupr_out": 0.6,
           "scores": {"energy": {"per_set": {"fmnist_near": per, "noise": per}}, "msp": {"per_set": {"noise": per}}}}
    m = eval_metrics(res, "fmnist_near", "energy")
    assert m["eval/id_acc"] == 0.95 and m["eval/mean/fpr95"] == 0.3 and m["eval/headline/auroc"] == 0.9
    assert m["eval/energy/fmnist_near/fpr95"] == 0.2 and m["eval/msp/noise/auroc"] == 0.9
    assert len(m) == 1 + 4 + 2 + 3 * 2
