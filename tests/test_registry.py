"""The method registry: each entry's declared properties drive config, model building, sampling, the training step and
evaluation, and a new entry works without touching any other module."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from greg_ood.run import config as C
from greg_ood import methods as M
from greg_ood.run import pipeline, runlog
from greg_ood import registry
from greg_ood.run.config import SCORES
from greg_ood.registry import Method, Selection
from greg_ood.run.trainer import Hooks, Job, Sources, Trainer

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
K = 6  # the mini suite's classes
B = 4  # ID rows per step in the short runs below


class _Source:
    """Deterministic batches (ID with labels, or auxiliary rows) for a few steps; pure functions of (epoch, step)."""

    steps_per_epoch = 4

    def __init__(self, n: int, labels: bool):
        self.n, self.labels = n, labels

    def batch(self, epoch: int, step: int):
        g = torch.Generator().manual_seed(1000 * epoch + step + (0 if self.labels else 500))
        x = torch.randn(self.n, 1, 28, 28, generator=g)
        return (x, torch.randint(0, K, (self.n,), generator=g)) if self.labels else x

    def iter_epoch(self, epoch: int, start: int = 0):
        for step in range(start, self.steps_per_epoch):
            yield self.batch(epoch, step)


def _cfg(raw=None) -> C.Config:
    return C.validate(copy.deepcopy(raw or RAW), ROOT / "params.yaml")


def _train(method: str, cfg: C.Config, log_every: int = 2) -> tuple[Trainer, list]:
    """Two steps of ``method`` on the mini suite's small_cnn (margins around its initial energies)."""
    t = cfg.train_cfg("mini", method)
    t = t.model_copy(update={"epochs": 1, "steps_per_epoch": 2, "batch_size": B, "gradnorm_every": 2,
                             "loss": t.loss.model_copy(update={"m_in": -1.9, "m_out": -1.7}),
                             "sampling": t.sampling.model_copy(update={"candidate_batch": 4 * B, "n_clusters": 4,
                                                                       "n_init": 1, "start": 0})})
    torch.manual_seed(0)
    model = pipeline.build_model(cfg, "mini", "small_cnn", method)
    rows: list = []
    n_aux = pipeline.candidate_batch_size(t, method, n_id=1000, n_aux=1000)
    tr = Trainer(model, Job(method, t, seed=0), Sources(_Source(B, True), _Source(n_aux, False)),
                 device=torch.device("cpu"), hooks=Hooks(log=lambda r, s: rows.append((s, r)), log_every=log_every))
    return tr, rows


# --------------------------------------------------------------------------------------------- the table itself
def test_table_is_consistent():
    assert registry.ORDER == ("energy", "oe", "oe_grad", "dos", "greg", "greg_plus", "poem", "poem_grad")
    assert registry.METHODS == ("ce",) + registry.ORDER
    cfg = _cfg()
    for m in registry.REGISTRY.values():
        # every declared term is one the step sums, listed in the order it adds them
        assert [t for t in registry.TERMS if t in m.terms] == list(m.terms), m.name
        assert m.detection_score is None or m.detection_score in SCORES, m.name
        if m.trained:  # the defining settings are valid training settings
            cfg.train_cfg("mini", m.name)
    assert registry.display_name("greg_plus") == "GReg+" and registry.display_name("oe_grad") == "OE + grad"
    assert registry.penalty_pairs() == [("energy", "greg"), ("oe", "oe_grad"), ("poem", "poem_grad")]
    with pytest.raises(ValueError, match="follow the order"):
        registry.Method("x", "X", ("ce", "grad", "energy"))
    assert C.GradAblationCfg().pairs == [("energy", "greg"), ("oe", "oe_grad"), ("poem", "poem_grad")]
    assert registry.display_name("openmix") == "openmix"  # unknown names pass through (paper-only methods)
    with pytest.raises(ValueError, match="unknown method 'openmix'.*greg_plus"):
        registry.get("openmix")


@pytest.mark.parametrize("bad,match", [
    (dict(terms=("energy",)), "terms must start with 'ce'"),
    (dict(terms=("ce", "openmix")), "terms must start with 'ce'"),
    (dict(terms=("ce", "oe"), aux=False), "without auxiliary data"),
    (dict(terms=("ce",), extra_outputs=-1), "extra_outputs"),
    (dict(terms=("ce", "oe"), adds_penalty_to="oe"), "adds_penalty_to"),
])
def test_bad_entries_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        Method("x", "X", **bad)
    with pytest.raises(ValueError, match="score"):
        Selection("msp")


# ------------------------------------------------------------------------------- declared properties drive behaviour
@pytest.mark.parametrize("name", registry.METHODS)
def test_model_outputs_and_aux_batch_follow_the_entry(name):
    cfg = _cfg()
    entry = registry.get(name)
    model = pipeline.build_model(cfg, "mini", "small_cnn", name)
    assert model(torch.zeros(2, 1, 28, 28)).shape[1] == K + entry.extra_outputs
    t = cfg.train_cfg("mini", "greg")  # the suite's shared settings: candidate_batch 384, B = 64
    n = pipeline.candidate_batch_size(t, name, n_id=36000, n_aux=50000)
    assert n == (384 if entry.selects else 64)


def test_detection_scores_and_penalties():
    assert {n: m.detection_score for n, m in registry.REGISTRY.items() if m.detection_score} == {"dos": "absent_class"}
    assert {n for n, m in registry.REGISTRY.items() if m.has_penalty} == {"oe_grad", "greg", "greg_plus", "poem_grad"}
    assert {n: m.selection.score for n, m in registry.REGISTRY.items() if m.selection} == \
        {"dos": "absent", "greg_plus": "energy"}
    # the penalty is on only with lambda_grad > 0, and never for a method without the term
    assert M.MethodLoss.of("greg").penalty_on and not M.MethodLoss.of("greg", lambda_grad=0.0).penalty_on
    assert not M.MethodLoss.of("energy", lambda_grad=5.0).penalty_on


def test_method_defining_settings_sit_between_train_and_method_params():
    raw = copy.deepcopy(RAW)
    mini = raw["suites"]["mini"]
    mini["method_params"]["dos"] = {}  # rely on the registry alone
    cfg = _cfg(raw)
    assert mini["train"]["sampling"]["two_way"] is True and mini["train"]["loss"]["lambda_grad"] == 1.0
    dos = cfg.train_cfg("mini", "dos")
    assert (dos.sampling.two_way, dos.sampling.start, dos.loss.lambda_grad) == (False, 16, 0.0)  # beats `train`
    assert cfg.train_cfg("mini", "energy").loss.lambda_grad == 0.0
    assert cfg.train_cfg("mini", "oe").loss.lambda_energy == 0.0
    assert cfg.train_cfg("mini", "greg_plus").sampling.two_way is True  # no defining setting: `train` applies
    mini["method_params"]["dos"] = {"sampling": {"two_way": True}}
    assert _cfg(raw).train_cfg("mini", "dos").sampling.two_way is True  # method_params beats the registry


def test_trainer_uses_the_declared_selection():
    cfg = _cfg()
    for name, picked in (("greg_plus", 2 * B), ("dos", B), ("greg", B)):  # two-way: 2 per ID row; one-way: 1
        tr, _ = _train(name, cfg)
        x_aux, roles = tr.aux_batch(0, 0, n_id=B)
        assert x_aux.shape[0] == picked, name


# ------------------------------------------------------------------------------------ a new method, nothing else
def test_a_new_entry_works_without_touching_other_modules(monkeypatch):
    """DOS with the gradient penalty: declared once, it validates, builds, samples, trains and evaluates."""
    entry = Method("dos_grad", "DOS + grad", ("ce", "abs", "grad"), selection=Selection("absent"), extra_outputs=1,
                   detection_score="absent_class", settings={"sampling": {"start": 0, "two_way": False}},
                   adds_penalty_to="dos")
    raw = copy.deepcopy(RAW)
    raw["suites"]["mini"]["methods"].append("dos_grad")
    del raw["suites"]["mini"]["grad_ablation"]  # the default pairs come from the registry
    with pytest.raises(C.ConfigError, match="unknown method 'dos_grad'"):
        _cfg(raw)
    monkeypatch.setitem(registry.REGISTRY, "dos_grad", entry)
    cfg = _cfg(raw)
    assert cfg.suite("mini").grad_ablation.pairs == [("energy", "greg"), ("oe", "oe_grad"), ("dos", "dos_grad"),
                                                     ("poem", "poem_grad")]
    assert cfg.experiment("mini", "dos_grad", "small_cnn", 0).train.sampling.two_way is False
    tr, rows = _train("dos_grad", cfg)
    assert tr.model(torch.zeros(1, 1, 28, 28)).shape[1] == K + 1
    assert tr.aux_batch(0, 0, n_id=B)[0].shape[0] == B  # one-way absent-class picks from 4 B candidates
    tr.fit()
    logged = {k for _, r in rows for k in r}
    assert {"ce", "abs", "grad", "active_frac", "active_frac_id", "monitor_gradnorm_id"} <= logged
    assert "energy" not in logged and "oe" not in logged
    assert registry.get("dos_grad").detection_score == "absent_class"


# ----------------------------------------------------------------------------------------- diagnostics per run
def test_every_logged_key_has_a_csv_column():
    cfg = _cfg()
    for name in registry.ORDER:
        tr, rows = _train(name, cfg, log_every=1)
        tr.fit()
        logged = {k for _, r in rows for k in r}
        assert logged <= set(runlog.CSV_FIELDS), (name, logged - set(runlog.CSV_FIELDS))
        # Energy, without a penalty, logs the same margin fractions and the true input-gradient norms as GReg
        assert {"active_frac_id", "active_frac_aux", "energy_id_p50", "energy_aux_p95", "monitor_gradnorm_id",
                "monitor_gradnorm_aux"} <= logged, name


def test_leaf_paths_and_replaces():
    """What a settings layer sets (an empty mapping sets nothing, as deep_merge treats it) and what it replaces."""
    layer = {"loss": {"lambda_grad": 0.0, "m_in": -1.0}, "poem": {}, "sampling": {"start": 16}, "init": "scratch"}
    assert registry.leaf_paths(layer) == [("loss", "lambda_grad"), ("loss", "m_in"), ("sampling", "start"), ("init",)]
    assert registry.replaces(("loss", "lambda_grad"), layer) and not registry.replaces(("loss", "m_out"), layer)
    assert registry.replaces(("sampling", "start"), registry.get("dos").settings)
    assert not registry.replaces(("loss", "lambda_grad"), registry.get("greg").settings)
    assert registry.replaces(("optimizer", "lr"), {"optimizer": "adam"})  # a value above the key replaces it
    assert not registry.replaces(("poem", "target"), {"poem": {}})
