"""Dress rehearsal of the paper suites: the real `dvc repro report_<suite>` for cifar10, cifar100 and imagenet on CPU.

Every dataset the suite uses is a tiny, format-true stand-in (real file names, archive formats and member layouts;
tests/data_fixtures.py) served from a local HTTP server and registered through ``$GREG_OOD_SOURCES``; ImageNet is a
tiny extracted ILSVRC tree given as ``imagenet_root``. The params overrides shrink only sizes and lengths (steps,
batch rows, seeds, counts, cluster counts); the structure stays: for cifar10 every architecture and method, DOS and
GReg+ from scratch with a step schedule, the lambda_grad ablation, certify, every detection score and the report;
cifar100 and imagenet run one architecture each; cifar10 trains with TIN-597 as the auxiliary pool and both cifar
suites also evaluate the OpenOOD v1.5 protocol. Each suite is its own test (one repository copy per suite).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from data_fixtures import FileServer, ilsvrc_tree, serve_standins
from greg_ood.data import imagenet as IN
from greg_ood.run.dvcgen import dvc_files

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.rehearsal]

#: the one architecture of the suites that run one (cifar10 runs all three)
ONE_ARCH = {"cifar100": "wrn40_2", "imagenet": "densenet121"}


def shrink(raw: dict, suite: str, imagenet_root: Path) -> dict:
    """Overrides of sizes and lengths only: 2 epochs of 2 steps (the step schedules keep a milestone at epoch 1),
    batches of a few rows, the suite's first seed, small counts and cluster numbers."""
    s = raw["suites"][suite]
    small_batch = 2 if suite == "imagenet" else 4
    seed = s["seeds"][0]
    s["seeds"] = [seed]
    if suite in ONE_ARCH:
        s["archs"] = [ONE_ARCH[suite]]
        s["ablation"]["arch"] = ONE_ARCH[suite]
    s["ablation"]["seeds"] = [seed]
    s["pretrain"].update(epochs=1, steps_per_epoch=2, batch_size=small_batch)
    s["pretrain"]["schedule"]["milestones"] = [1] if s["pretrain"]["schedule"].get("milestones") else []
    s["select"].update(n_clusters=3, batch_size=16)
    tr = s["train"]
    tr.update(epochs=2, steps_per_epoch=2, batch_size=small_batch, checkpoint_every=2, gradnorm_every=1)
    tr["sampling"].update(n_clusters=2, candidate_batch=4 * small_batch)
    if tr["sampling"].get("pool") not in (None, "all"):
        tr["sampling"]["pool"] = 8
    if tr["schedule"].get("milestones"):
        tr["schedule"]["milestones"] = [1]
    for m, mp in s["method_params"].items():
        if "epochs" in mp:
            mp["epochs"] = 2
        if mp.get("schedule", {}).get("milestones"):
            mp["schedule"]["milestones"] = [1]
        samp = mp.get("sampling", {})
        if "start" in samp:  # the one-way window keeps its shape: skip the first rows of each cluster
            samp["start"] = 1
        if "stop" in samp:
            samp["stop"] = 3
    if suite == "cifar10":  # TIN-597 instead of TI-300K (the README's `dvc exp run -S` recipe); cifar100 keeps TI-300K
        s["data"]["aux"]["dataset"] = "tin597"
    s["eval"].update(batch_size=8, mahalanobis_fit_count=16)
    s["certify"].update(count=4, batch_size=small_batch)
    raw["mlflow"]["log_every"] = 1
    ds = raw["datasets"]
    ds["places365"]["count"] = 6
    for name in ("inaturalist", "sun", "places", "dtd_imagenet"):
        ds[name]["count"] = 4
    ds["imagenet"]["imagenet_root"] = str(imagenet_root)
    return raw


def _datasets(s: dict) -> list[str]:
    """Every dataset the suite reads: ID, auxiliary, the paper's OOD sets and the extra protocols' sets."""
    from greg_ood.data.openood import OPENOOD_V1_5_SETS

    d = s["data"]
    extra = OPENOOD_V1_5_SETS[d["id"]["dataset"]] if "openood_v1_5" in s["eval"].get("protocols", []) else ()
    return sorted({d["id"]["dataset"], d["aux"]["dataset"], *(o["dataset"] for o in d["ood"]),
                   *(p.dataset for p in extra)})


def _sh(args, cwd, env, timeout=1800, check=True):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-6000:]}\n"
                             f"{r.stderr[-8000:]}")
    return r


def _copy_repo(d: Path) -> None:
    for name in ("stages", "src", "reports/paper"):
        shutil.copytree(ROOT / name, d / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, d / name)
    for f in dvc_files(ROOT)[1:]:  # the stage groups with a dvc.yaml of their own
        (d / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, d / f.relative_to(ROOT))
    (d / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", d / ".dvc" / "config")


def expected_stages(s: dict, suite: str) -> set[str]:
    """The dvc.lock keys `dvc repro report_<suite>` must produce, from the (shrunk) suite params."""
    out = {f"download@{n}" for n in _datasets(s)}
    out |= {f"{k}@{a}" for a in s["archs"] for k in (f"pretrain_{suite}", f"select_{suite}",
                                                      f"evaluate_{suite}_pretrained")}
    out |= {f"{k}_{suite}@{m}-{a}-{seed}" for m in s["methods"] for a in s["archs"] for seed in s["seeds"]
            for k in ("train", "evaluate")}
    out |= {f"{k}_{suite}_ablation@{lg}-{seed}" for lg in s["ablation"]["lambda_grad"]
            for seed in s["ablation"]["seeds"] for k in ("train", "evaluate")}
    return out | {f"certify_{suite}", f"report_{suite}"}


@pytest.fixture(scope="module")
def server():
    s = FileServer()
    yield s
    s.close()


@pytest.fixture(scope="module", params=["cifar10", "cifar100", "imagenet"])
def rehearsal(request, tmp_path_factory, server):
    suite = request.param
    d = tmp_path_factory.mktemp(f"rehearsal-{suite}")
    side = tmp_path_factory.mktemp(f"side-{suite}")
    _copy_repo(d)
    root = ilsvrc_tree(side / "ilsvrc", IN.id_classes(10), [w for w in IN.sorted_wnids()
                                                             if w not in IN.id_classes(10)][:4], per_class=2)
    raw = shrink(yaml.safe_load((ROOT / "params.yaml").read_text()), suite, root)
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    s = raw["suites"][suite]
    names = [n for n in _datasets(s) if n != "imagenet"]
    (side / "sources.json").write_text(json.dumps(serve_standins(server, names)))
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(d / "src"), "DVC_NO_ANALYTICS": "1",
                "GREG_OOD_SOURCES": str(side / "sources.json"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    _sh(["git", "init", "-q"], d, env)
    _sh(["git", "add", "-A"], d, env)
    _sh(["git", "commit", "-qm", f"rehearsal {suite}"], d, env)
    t0 = time.time()
    # as `make mini` runs a suite: every stage by `dvc repro -s`, two at a time (greg_ood.cli.repro)
    r = _sh([str(BIN / "python"), "-m", "greg_ood.cli.repro", f"report_{suite}", "--jobs", "2"], d, env,
            timeout=5400)
    took = time.time() - t0
    print(f"\n[rehearsal] dvc repro report_{suite}: {took:.0f} s")
    (side / "repro.log").write_text(r.stdout + r.stderr)
    return suite, d, env, s, r, took


def test_every_stage_ran_and_nothing_is_left_to_run(rehearsal):
    suite, d, env, s, r, _ = rehearsal
    lock = {}
    for f in [d / "dvc.lock", *d.glob("pipelines/*/dvc.lock")]:
        lock.update(yaml.safe_load(f.read_text())["stages"])
    missing = expected_stages(s, suite) - set(lock)
    assert not missing, sorted(missing)
    ran = {k.rsplit(":", 1)[-1] for k in re.findall(r"Running stage '([^']+)'", r.stdout)}
    assert expected_stages(s, suite) <= ran, sorted(expected_stages(s, suite) - ran)
    assert "using source override from" in r.stdout + r.stderr  # the stand-ins came through $GREG_OOD_SOURCES
    st = _sh([str(BIN / "dvc"), "status", f"report_{suite}", "--json"], d, env)
    assert json.loads(st.stdout or "{}") == {}, st.stdout
    again = _sh([str(BIN / "dvc"), "repro", f"report_{suite}"], d, env)
    assert "Running stage" not in again.stdout, again.stdout[-3000:]


def test_mlflow_holds_one_finished_run_per_stage(rehearsal):
    suite, d, env, s, _, _ = rehearsal
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    stages = expected_stages(s, suite)
    for exp_name, kinds in ((f"greg-ood/{suite}", lambda k: not k.startswith("download@")),
                            ("greg-ood/data", lambda k: k.startswith("download@"))):
        exp = c.get_experiment_by_name(exp_name)
        assert exp is not None, exp_name
        runs = c.search_runs([exp.experiment_id], max_results=1000)
        assert all(run.info.status == "FINISHED" for run in runs), [(x.info.run_name, x.info.status) for x in runs]
        names = [run.info.run_name for run in runs]
        assert len(names) == len(set(names)), sorted(names)  # one run per stage: nothing ran twice
        assert len(names) == sum(map(kinds, stages)), (sorted(names), sorted(filter(kinds, stages)))


def test_report_has_every_arch_method_and_every_score(rehearsal):
    suite, d, _, s, _, _ = rehearsal
    from greg_ood.report import ARCH_NAMES, METHOD_NAMES

    rep = d / "reports" / suite
    main = pd.read_csv(rep / "main.csv")
    got = set(zip(main["Architecture"], main["Method"]))
    want = {(ARCH_NAMES.get(a, a), METHOD_NAMES.get(m, m)) for a in s["archs"] for m in s["methods"]}
    assert want <= got, sorted(want - got)
    for score in s["eval"]["scores"]:
        assert (rep / f"main_{score}.csv").exists(), (score, sorted(p.name for p in rep.iterdir()))
    for name in ["grad_ablation", "summary"] + (["ablation"] if s["ablation"]["lambda_grad"] else []):
        assert (rep / f"{name}.md").exists(), name
    if "openood_v1_5" in s["eval"].get("protocols", []):  # the second protocol's own table, every arch and method
        oo = pd.read_csv(rep / "openood_v1_5.csv")
        assert want <= set(zip(oo["Architecture"], oo["Method"])), sorted(want - set(zip(oo["Architecture"],
                                                                                         oo["Method"])))
        assert {"Near-OOD FPR95 (OOD+, OpenOOD) ↓", "Far-OOD FPR95 (ID+, paper) ↓"} <= set(oo.columns)
    assert list((d / "certify" / suite).iterdir())


def _md_rows(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def test_every_paper_number_is_beside_ours_or_says_why_not(rehearsal):
    suite, d, _, s, _, _ = rehearsal
    from greg_ood.report.paper import PAPER_METHOD_NAMES, PAPER_TO_OUR_METHOD, SUITE_BENCHMARK

    paper = pd.read_csv(d / "reports" / "paper" / "paper_numbers.csv")
    paper = paper[paper["benchmark"] == SUITE_BENCHMARK[suite]]
    assert len(paper), suite
    rows = _md_rows(d / "reports" / suite / "paper_comparison.md")
    ours_col = next(k for k in rows[0] if k.startswith("Ours"))
    for _, p in paper.iterrows():
        name = PAPER_METHOD_NAMES.get(p["method"], p["method"])
        hits = [r for r in rows if r.get("Paper") == f"{p['value']:.2f}" and r.get("Method") == name]
        assert hits, (p.to_dict(), rows[:3])
        ours = hits[0][ours_col]
        our_method = PAPER_TO_OUR_METHOD.get(p["method"])
        if our_method in s["methods"] and any(a == p["arch"] or (a, p["arch"]) == ("densenet100", "densenet101")
                                              for a in s["archs"]):
            assert re.match(r"^\d+\.\d+", ours), (p.to_dict(), hits[0])  # a number of ours beside the paper's
        else:
            assert ours and not re.match(r"^\d", ours), (p.to_dict(), hits[0])  # the reason it is not produced
