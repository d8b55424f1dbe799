"""A newcomer's mistakes end in one sentence before any compute, and every fix an error proposes is a command that
exists on this repository (all suites declared): a misspelled OOD / ID / auxiliary dataset, a misspelled
grad-ablation pair, and the `dvc repro ...` addresses the stages name in their hints."""
from __future__ import annotations

import copy
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from greg_ood.run import config as C
from greg_ood.data.sources import Source
from greg_ood.run.runinfo import RunInfo, pretrained_experiment
from test_readme import dvc_stages

ROOT = Path(__file__).resolve().parent.parent
# the modules (the package `greg_ood.data` exports functions of the same names)
PREP = importlib.import_module("greg_ood.data.prepare")
DL = importlib.import_module("greg_ood.data.download")


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _error(raw: dict, edit) -> str:
    r = copy.deepcopy(raw)
    edit(r)
    with pytest.raises(C.ConfigError) as e:
        C.validate(r)
    return str(e.value)


def _problems(msg: str) -> list[str]:
    return [ln for ln in msg.splitlines() if ln.startswith("  - ")]


@pytest.mark.parametrize("edit, key, fix", [
    (lambda r: r["suites"]["mini"]["data"]["ood"][1].update(dataset="digitz"),
     "suites.mini.data.ood (digits).dataset", "did you mean 'digits'?"),
    (lambda r: r["suites"]["fmnist"]["data"]["id"].update(dataset="fashion_mnst"),
     "suites.fmnist.data.id.dataset", "did you mean 'fashion_mnist'?"),
    (lambda r: r["suites"]["cifar10"]["data"]["ood"][0].update(dataset="svhn") or r["datasets"].pop("svhn"),
     "suites.cifar10.data.ood (textures).dataset", "add `svhn: {}` under datasets (its download stage)"),
])
def test_undeclared_dataset_is_one_sentence_with_the_fix(raw, edit, key, fix):
    msg = _error(raw, edit)
    [line] = _problems(msg)
    assert line.startswith(f"  - {key} reads dataset ") and line.endswith(fix)
    assert "{" not in line.replace("{}", "")  # no config dict echoed


def test_misspelled_grad_ablation_pair_names_the_key_and_dumps_no_dict(raw):
    msg = _error(raw, lambda r: r["suites"]["mini"]["grad_ablation"].update(pairs=[["oe", "oe_gradd"]]))
    [line] = _problems(msg)
    assert "suites.mini.grad_ablation.pairs.0.1" in line and "did you mean 'oe_grad'?" in line
    # a pair of methods the suite does not train: a suite-level check, whose input is the whole suite section
    r = copy.deepcopy(raw)
    r["suites"]["mini"]["methods"] = ["energy", "greg"]
    r["suites"]["mini"]["method_params"] = {}
    r["suites"]["mini"]["certify"]["methods"] = ["energy", "greg"]
    r["suites"]["mini"]["grad_ablation"]["pairs"] = [["oe", "oe_grad"]]
    with pytest.raises(C.ConfigError) as e:
        C.validate(r)
    [line] = _problems(str(e.value))
    assert "grad_ablation pair method 'oe' is not trained by this suite" in line
    assert "'num_classes'" not in line and "(got {" not in line and len(line) < 300


def test_misspelled_ood_dataset_stops_the_first_stage_before_compute(tmp_path, raw):
    """`dvc repro` runs download@fashion_mnist first: its stage validates params.yaml and stops in one sentence,
    exit 2, before touching any data."""
    r = copy.deepcopy(raw)
    r["suites"]["mini"]["data"]["ood"][1]["dataset"] = "digitz"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(r, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    p = subprocess.run([sys.executable, str(ROOT / "stages" / "download.py"), "fashion_mnist"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert any(ln.strip().endswith("reads dataset 'digitz', which `datasets` does not declare: did you mean "
                                   "'digits'?") for ln in err), p.stderr
    assert len(err) <= 2  # the file's name, then the one problem
    assert not (tmp_path / "data").exists() and not (tmp_path / "m.db").exists()


def _hint_commands(cfg: C.Config) -> list[str]:
    """Every `dvc repro` fix the stages propose, for every suite and experiment of params.yaml."""
    hints = []
    for name in cfg.params.suites:
        s = cfg.suite(name)
        for ds in {s.data.id.dataset, s.data.aux.dataset, *(o.dataset for o in s.data.ood)}:
            hints += [re.search(r"`(dvc repro [^`]+)`", PREP._fix_hint(ds)).group(1),
                      re.search(r"`(dvc repro [^`]+)`", DL.manual_message(Source("f.zip", ()), Path("x"),
                                                                           ds)).group(1)]
        for arch in s.archs:
            hints += [f"dvc repro {RunInfo('pretrain', suite=name, arch=arch).dvc_target}",
                      f"dvc repro {RunInfo('select', suite=name, arch=arch).dvc_target}",
                      f"dvc repro {RunInfo('evaluate', suite=name, arch=arch, method='pretrained', seed=0).dvc_target}"]
        for e in cfg.experiments(name):
            hints += [f"dvc repro -f {RunInfo.of_experiment(st, e).dvc_target}" for st in ("train", "evaluate")]
        hints += [f"dvc repro report_{name}", f"dvc repro {RunInfo('certify', suite=name).dvc_target}"]
    return hints


def test_every_proposed_dvc_repro_names_a_stage_of_this_repository():
    from dvc.cli import parse_args

    cfg = C.load(ROOT / "params.yaml")
    hints = _hint_commands(cfg)
    assert len(hints) > 300 and "dvc repro download@digits" in hints
    stages = dvc_stages()
    for h in hints:
        args = parse_args(h.split()[1:])
        for t in args.targets:
            assert t in stages, f"an error proposes `{h}`, but DVC has no stage {t!r}"
    assert pretrained_experiment("mini", "small_cnn")  # the baseline's results name, used by the report's hint
