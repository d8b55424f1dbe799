"""Browsing runs: MLflow 3 opens our experiments as classic ML experiments (runs table), a short ``summary/`` group of
headline metrics in %, the pretrain run's name; offline plot pages whose legends name method, seed and λ and that
leave out files of removed stages; the λ sweep table (mean ± std over seeds)."""
from __future__ import annotations

import pytest

from greg_ood import tracking
from greg_ood.runinfo import RunInfo, summary_metrics

KIND = ("mlflow.experimentKind", "custom_model_development")


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return uri


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
    # ... or by `python -m greg_ood.tracking classic` for the whole store
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
