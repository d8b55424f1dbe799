"""Browsing runs: MLflow 3 opens our experiments as classic ML experiments (runs table), a short ``summary/`` group of
headline metrics in %, the pretrain run's name; offline plot pages whose legends name method, seed and λ and that
leave out files of removed stages; the λ sweep table (mean ± std over seeds)."""
from __future__ import annotations

import pytest

from greg_ood.run import tracking
from greg_ood.run.runinfo import RunInfo, summary_metrics

KIND = ("mlflow.experimentKind", "custom_model_development")


def test_fresh_and_existing_experiments_are_classic(store):
    from mlflow.tracking import MlflowClient

    assert tracking.EXPERIMENT_KIND == KIND
    with tracking.stage_run(RunInfo("train", suite="mini", method="greg", arch="small_cnn", seed=0)):
        pass
    c = MlflowClient(store)
    assert c.get_experiment_by_name("greg-ood/mini").tags.get(KIND[0]) == KIND[1]
    # an experiment made before (no kind tag, as MLflow's UI would infer GenAI): tagged by the next stage run ...
    old = c.create_experiment("greg-ood/fmnist")
    assert KIND[0] not in c.get_experiment(old).tags
    with tracking.stage_run(RunInfo("report", suite="fmnist")):
        pass
    assert c.get_experiment(old).tags[KIND[0]] == KIND[1]
    # ... or by `python -m greg_ood.run.tracking classic` for the whole store
    other = c.create_experiment("greg-ood/cifar10")
    tracking.main(["classic"])
    assert c.get_experiment(other).tags[KIND[0]] == KIND[1]
    assert tracking.mark_classic(c, c.get_experiment(other)) is False


def test_summary_metrics_in_percent_rounded():
    res = {"id_accuracy": 0.890500009, "fpr95": 0.105416666, "auroc": 0.96690803,
           "scores": {"energy": {"per_set": {"near": {"fpr95": 0.6035, "auroc": 0.81815350001}}},
                      "msp": {"per_set": {"near": {"fpr95": 0.9, "auroc": 0.5}}}}}
    assert summary_metrics(res, "near", "energy") == {
        "summary/fpr95": 60.35, "summary/auroc": 81.82, "summary/mean_fpr95": 10.54, "summary/mean_auroc": 96.69,
        "summary/id_acc": 89.05}
    assert summary_metrics(res, "near", "msp")["summary/fpr95"] == 90.0


def test_pretrain_run_is_named_for_what_it_is():
    info = RunInfo("pretrain", suite="mini", arch="small_cnn", method="ce", seed=0)
    assert info.run_name == "pretrain · cross-entropy · s0 (mini, small_cnn)"


def _eval_run(c, exp_id, method, lam, seed, fpr, auroc, acc, exp_name="", arch="small_cnn", group="main"):
    """A finished evaluate run as the evaluate stage leaves it (identity params and tags, eval metrics)."""
    r = c.create_run(exp_id, tags={"stage": "evaluate", "method": method, **({"group": group} if group else {}),
                                   **({"dvc.exp_name": exp_name} if exp_name else {})})
    for k, v in {"method": method, "arch": arch, "lambda_grad": lam, "seed": seed}.items():
        c.log_param(r.info.run_id, k, v)
    for k, v in {"eval/headline/fpr95": fpr, "eval/headline/auroc": auroc, "eval/id_acc": acc}.items():
        c.log_metric(r.info.run_id, k, v)
    c.set_terminated(r.info.run_id)


def test_sweep_table_mean_and_std_over_seeds_from_mlflow(store):
    from mlflow.tracking import MlflowClient

    from greg_ood.cli import exps

    c = MlflowClient(store)
    eid = c.create_experiment("greg-ood/mini")
    # λ = 0.1: FPR95 0.40 / 0.50 / 0.60 over seeds -> 50.00 ± 10.00 %; AUROC 0.80 / 0.80 / 0.83 -> 81.00 ± 1.73
    for seed, fpr, auroc in [(0, 0.40, 0.80), (1, 0.50, 0.80), (2, 0.60, 0.83)]:
        _eval_run(c, eid, "greg", 0.1, seed, fpr, auroc, 0.9, exp_name="exp-a")
    # λ = 10: a stale run of seed 0 first, then its re-run (the newer counts): FPR95 0.20 / 0.30 -> 25.00 ± 7.07
    _eval_run(c, eid, "greg", 10.0, 0, 0.99, 0.5, 0.9, exp_name="exp-b")
    _eval_run(c, eid, "greg", 10.0, 0, 0.20, 0.90, 0.9, exp_name="exp-b")
    _eval_run(c, eid, "greg", 10.0, 1, 0.30, 0.90, 0.8, group="ablation")  # the suite's own λ ablation point
    _eval_run(c, eid, "energy", 0.0, 0, 0.70, 0.70, 0.91)  # one seed: mean alone
    _eval_run(c, eid, "pretrained", 0.0, 0, 0.10, 0.10, 0.10, group="")  # the baseline: not a point of a sweep
    rows = exps.sweep_runs("mini")
    assert len(rows) == 6
    table = exps.sweep_table(rows).set_index(["method", "λ_grad"])
    assert table.loc[("greg", "0.1"), "FPR95 % (headline)"] == "50.00 ± 10.00"
    assert table.loc[("greg", "0.1"), "AUROC % (headline)"] == "81.00 ± 1.73"
    assert table.loc[("greg", "10"), "FPR95 % (headline)"] == "25.00 ± 7.07"
    assert table.loc[("greg", "10"), "ID acc %"] == "85.00 ± 7.07" and table.loc[("greg", "10"), "seeds"] == 2
    assert table.loc[("energy", "0"), "FPR95 % (headline)"] == "70.00"
    assert "FPR95 % (mean)" not in table.columns  # no run logged it
    assert len(exps.sweep_runs("mini", "energy")) == 1 and exps.sweep_runs("cifar10") == []
