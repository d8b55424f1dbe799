"""params.yaml validation: each malformed variant stops with a message naming the key and what is allowed."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from greg_ood.run import config as C

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _set(path: str, value):
    def f(raw):
        keys = path.split(".")
        cur = raw
        for k in keys[:-1]:
            cur = cur[int(k)] if isinstance(cur, list) else cur[k]
        if value is _DEL:
            del cur[keys[-1]]
        else:
            cur[keys[-1]] = value
    return f


_DEL = object()

# (mutation, substrings the error must contain)
BAD = [
    (_set("suites.mini.train.lamda_grad", 1.0), ["suites.mini.train.lamda_grad", "loss.lambda_grad"]),
    (_set("suites.mini.train.loss.lamda_grad", 1.0), ["suites.mini.train.loss.lamda_grad", "lambda_grad"]),
    (_set("suites.mini.train.epochs", -1), ["suites.mini.train.epochs", "greater than 0"]),
    (_set("suites.mini.train.epochs", "ten"), ["suites.mini.train.epochs", "integer"]),
    (_set("suites.mini.pretrain.epochs", 0), ["suites.mini.pretrain.epochs"]),
    (_set("suites.mini.train.loss.m_in", 0.0), ["suites.mini.train.loss", "m_in", "m_out"]),
    (_set("suites.mini.method_params.greg", {"loss": {"m_out": -20.0}}), ["method_params.greg", "m_in"]),
    (_set("suites.mini.archs", ["wrn40"]), ["suites.mini.archs.0", "wrn40_2"]),
    (_set("suites.mini.methods", ["greg", "gregplus"]), ["suites.mini.methods.1", "greg_plus"]),
    (_set("suites.mini.seeds", []), ["suites.mini.seeds", "at least 1"]),
    (_set("suites.mini.seeds", [0, 0]), ["suites.mini.seeds", "distinct"]),
    (_set("suites.mini.data.headline_set", "nope"), ["headline_set", "fmnist_near"]),
    (_set("suites.mini.data.ood", []), ["suites.mini.data.ood"]),
    (_set("suites.mini.eval.scores", ["energy", "odn"]), ["suites.mini.eval.scores.1", "odin"]),
    (_set("suites.mini.eval.primary", "msp_"), ["suites.mini.eval.primary"]),
    (_set("suites.mini.eval.positive", "outlier"), ["suites.mini.eval.positive", "'id' or 'ood'"]),
    (_set("suites.mini.eval.tpr", 1.5), ["suites.mini.eval.tpr", "less than 1"]),
    (_set("suites.mini.train.optimizer.name", "rmsprop"), ["suites.mini.train.optimizer.name", "'sgd' or 'adam'"]),
    (_set("suites.mini.train.optimizer.lr", 0), ["suites.mini.train.optimizer.lr"]),
    (_set("suites.mini.train.schedule.milestones", [10, 5]), ["milestones", "increasing"]),
    (_set("suites.mini.train.sampling.normalization", "l2"), ["suites.mini.train.sampling.normalization", "norm"]),
    (_set("suites.mini.train.sampling.stop", 0), ["suites.mini.train.sampling.stop"]),
    (_set("suites.mini.train.loss.reduction", "mean"), ["suites.mini.train.loss.reduction", "official"]),
    (_set("suites.mini.ablation.lambda_grad", [-1.0]), ["suites.mini.ablation.lambda_grad", ">= 0"]),
    (_set("suites.mini.grad_ablation.pairs", [["energy", "dos_grad"]]), ["grad_ablation.pairs"]),
    (_set("suites.mini.method_params.gregg", {}), ["method_params", "gregg"]),
    (_set("suites.minii", copy.deepcopy(RAW["suites"]["mini"])), ["minii", "mini"]),
    (_set("project.device", "gpu"), ["project.device", "cuda"]),
    (_set("sutes", {}), ["sutes", "suites"]),
    (_set("suites.mini.data.id", _DEL), ["suites.mini.data.id", "Field required"]),
    (_set("suites.mini.certify.methods", ["oe_grad", "greg_plus", "dos", "gregplus"]), ["certify.methods"]),
    # strict types: no bool -> int, no float or string -> int; finite floats only
    (_set("suites.mini.train.batch_size", True), ["suites.mini.train.batch_size", "valid integer", "True"]),
    (_set("suites.mini.train.epochs", 10.0), ["suites.mini.train.epochs", "valid integer"]),
    (_set("suites.mini.pretrain.batch_size", "128"), ["suites.mini.pretrain.batch_size", "valid integer"]),
    (_set("suites.mini.train.optimizer.lr", float("inf")), ["suites.mini.train.optimizer.lr", "finite"]),
    (_set("suites.mini.train.loss.lambda_grad", float("nan")), ["suites.mini.train.loss.lambda_grad", "finite"]),
    (_set("suites.mini.method_params.greg", {"optimizer": {"lr": float("inf")}}), ["method_params.greg", "finite"]),
    # "did you mean" under arch_options and datasets too
    (_set("suites.mini.arch_options", {"small_cnn": {"widht": [8]}}), ["arch_options.small_cnn", "'widths'"]),
    (_set("suites.mini.arch_options", {"smal_cnn": {}}), ["arch_options", "did you mean 'small_cnn'"]),
    (_set("datasets.skimage_crops", {"cout": 10}), ["datasets", "did you mean 'count'"]),
    (_set("datasets.fashion_mnst", {}), ["datasets", "did you mean 'fashion_mnist'"]),
]


def test_default_params_are_valid():
    cfg = C.load(ROOT / "params.yaml")
    assert set(cfg.params.suites) == {"mini", "fmnist", "cifar10", "cifar100", "imagenet"}
    # method defaults: energy fine-tuning is GReg with lambda_grad = 0; GReg keeps the paper's lambda = 1
    assert cfg.train_cfg("mini", "energy").loss.lambda_grad == 0
    assert cfg.train_cfg("cifar10", "greg").loss.lambda_grad == 1.0
    assert cfg.train_cfg("cifar10", "greg").loss.reduction == "official"
    # CIFAR GReg+: from scratch, SGD at 0.1 (the official Adam(0.1) is treated as a bug), step at epoch 50
    gp = cfg.train_cfg("cifar10", "greg_plus")
    assert (gp.init, gp.epochs, gp.optimizer.name, gp.optimizer.lr, gp.schedule.milestones) == \
        ("scratch", 60, "sgd", 0.1, [50])
    assert cfg.train_cfg("cifar10", "greg").loss.m_in == -25 and cfg.train_cfg("cifar10", "greg").loss.m_out == -7


@pytest.mark.parametrize("mutate,needles", BAD, ids=[n[0] for _, n in BAD])
def test_malformed_params_name_the_key(mutate, needles):
    raw = copy.deepcopy(RAW)
    mutate(raw)
    with pytest.raises(C.ConfigError) as ei:
        C.validate(raw)
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message:\n{msg}"


def test_at_least_twenty_variants():
    assert len(BAD) >= 20


def test_experiment_names_and_ablation_labels():
    cfg = C.load(ROOT / "params.yaml")
    e = cfg.experiment("mini", "greg", "small_cnn", 0)
    assert e.name == "mini-greg-small_cnn-s0"
    a = cfg.experiment("mini", "greg", "small_cnn", 1, ablation_lambda=10)
    assert a.name == "mini-greg-small_cnn-s1-lg10.0" and a.train.loss.lambda_grad == 10.0
    with pytest.raises(C.ConfigError, match="not listed"):
        cfg.experiment("mini", "greg", "small_cnn", 1, ablation_lambda=7)


def test_stage_exits_before_compute_on_bad_params(tmp_path):
    raw = copy.deepcopy(RAW)
    raw["suites"]["mini"]["train"]["loss"]["lamda_grad"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "--suite", "mini", "--method", "greg",
                        "--arch", "small_cnn", "--seed", "0"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert "suites.mini.train.loss.lamda_grad" in r.stderr and "lambda_grad" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_committed_dvc_yaml_matches_params():
    from greg_ood.run.dvcgen import render

    for rel, text in render(C.load(ROOT / "params.yaml")).items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run `make dvc.yaml`"


# ------------------------------------------------------------------------------------------ one source per setting
LAMBDA_GRAD = {"energy": 0.0, "oe": 0.0, "dos": 0.0, "poem": 0.0, "oe_grad": 3.0, "greg": 3.0, "greg_plus": 3.0,
               "poem_grad": 3.0}


def test_the_shared_lambda_reaches_every_method_with_the_gradient_term():
    raw = copy.deepcopy(RAW)
    raw["suites"]["mini"]["train"]["loss"]["lambda_grad"] = 3.0
    cfg = C.validate(raw)
    assert {m: cfg.train_cfg("mini", m).loss.lambda_grad for m in cfg.suite("mini").methods} == LAMBDA_GRAD
    assert {e.label: e.train.loss.lambda_grad for e in cfg.experiments("mini") if e.group == "ablation"} == \
        {"0.1": 0.1, "10.0": 10.0}  # the ablation points keep their own lambda
    # a per-method value is a deliberate exception, for that method alone
    raw["suites"]["mini"]["method_params"]["greg"] = {"loss": {"lambda_grad": 5.0}}
    cfg = C.validate(raw)
    assert {m: cfg.train_cfg("mini", m).loss.lambda_grad for m in cfg.suite("mini").methods} == \
        {**LAMBDA_GRAD, "greg": 5.0}


def test_a_shared_value_every_reader_overrides_is_refused_naming_both_keys():
    raw = copy.deepcopy(RAW)
    for m in ("oe_grad", "greg", "greg_plus", "poem_grad"):
        raw["suites"]["mini"]["method_params"][m] = {"loss": {"lambda_grad": 2.0}}
    with pytest.raises(C.ConfigError) as ei:
        C.validate(raw)
    msg = str(ei.value)
    assert "suites.mini.train.loss.lambda_grad never takes effect" in msg
    assert "suites.mini.method_params.oe_grad.loss.lambda_grad" in msg and "greg_plus, poem_grad" in msg
    assert msg.count(". ") == 0 and "delete the per-method values" in msg  # one sentence, with the fix
    # the same rule for any shared key: mini with Energy and GReg, both on their own learning rate
    raw = copy.deepcopy(RAW)
    mini = raw["suites"]["mini"]
    mini.update(methods=["energy", "greg"], grad_ablation={"pairs": [["energy", "greg"]]})
    for m in ("energy", "greg"):
        mini["method_params"][m] = {"optimizer": {"lr": 0.02}}
    with pytest.raises(C.ConfigError, match=r"suites\.mini\.train\.optimizer\.lr never takes effect, because "
                                            r"suites\.mini\.method_params\.energy\.optimizer\.lr"):
        C.validate(raw)
    # one reader left is enough: GReg takes the shared rate again
    del mini["method_params"]["greg"]["optimizer"]
    C.validate(raw)


def test_a_key_only_fixed_by_method_definitions_is_no_error():
    """A suite of Energy and OE only: lambda_grad is fixed to 0 by both definitions, nobody overrides it by hand (the
    value is for methods the suite does not run now); the ablation's method still reads the rest of `train`."""
    raw = copy.deepcopy(RAW)
    mini = raw["suites"]["mini"]
    mini.update(methods=["energy", "oe"], grad_ablation={"pairs": []})
    mini["certify"]["methods"] = ["energy"]
    cfg = C.validate(raw)
    assert ("loss", "lambda_grad") not in cfg.train_reads("mini", "energy")
    assert ("loss", "lambda_grad") not in cfg.train_reads("mini", "greg", ablation=True)
    assert ("loss", "lambda_energy") in cfg.train_reads("mini", "greg", ablation=True)


def _old_params() -> dict:
    """params.yaml before the one-source change (c083692), its training sections on the current file."""
    r = subprocess.run(["git", "show", "c083692:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"needs the repository's git history (commit c083692): {r.stderr.strip()}")
    old, raw = yaml.safe_load(r.stdout), copy.deepcopy(RAW)
    assert set(old["suites"]) == set(raw["suites"])
    for name, s in old["suites"].items():
        for key in ("methods", "train", "method_params", "ablation"):
            raw["suites"][name][key] = s[key]
    return raw


def test_resolved_settings_of_every_experiment_are_unchanged_by_the_one_source_cleanup():
    """Removing the lambda_grad repeats from method_params changes no experiment of any suite (so no committed
    result), and the old file, whose shared lambda every reader overrode, is now refused."""
    old = _old_params()
    before_cfg = C.Config(C.Params.model_validate(old), old, ROOT / "params.yaml")  # resolved without the new check
    after_cfg = C.load(ROOT / "params.yaml")
    n = 0
    for s in after_cfg.params.suites:
        before = {e.name: e.train.model_dump() for e in before_cfg.experiments(s)}
        after = {e.name: e.train.model_dump() for e in after_cfg.experiments(s)}
        assert before == after, s
        n += len(after)
    assert n > 100
    with pytest.raises(C.ConfigError, match=r"suites\.mini\.train\.loss\.lambda_grad never takes effect"):
        C.validate(old)
