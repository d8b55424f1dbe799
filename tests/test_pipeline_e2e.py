"""The real pipeline end to end on a tiny `mini` configuration: `dvc repro` with a real MLflow SQLite store.

Asserts every stage ran, `dvc metrics show` has the metrics, the MLflow store holds a run per stage with metrics and
artifacts, the tables exist, and the numbers are ones a broken pipeline would not produce. Then, in copies of the
finished pipeline, that editing a module re-runs exactly the stages whose code imports it and that a fresh re-run
leaves dvc.lock unchanged; then changes lambda_grad and checks that only the GReg stages are invalidated, and that
`dvc exp run -S` works.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from greg_ood.run.codedeps import closure_relative
from greg_ood.run.runinfo import dvc_file
from tools import scratch_repo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

def _sh(args, cwd, env, timeout=1500, check=True):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-4000:]}\n"
                             f"{r.stderr[-6000:]}")
    return r


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline")
    env = scratch_repo.build(d)
    # as `make mini` runs it: every stage by `dvc repro -s`, two at a time; test_fresh_rerun_leaves_dvc_lock_unchanged
    # re-runs stages one at a time with plain `dvc repro` and compares the locks byte for byte
    r = _sh([str(BIN / "python"), "-m", "greg_ood.cli.repro", "report_mini", "--jobs", "2"], d, env, timeout=3600)
    return d, env, r


def _locks(d: Path) -> dict[str, str]:
    """Every dvc.lock of the checkout ``d`` (the root one and each stage group's), by relative path."""
    files = [d / "dvc.lock", *sorted(d.glob("pipelines/*/dvc.lock"))]
    return {f.relative_to(d).as_posix(): f.read_text() for f in files if f.is_file()}


def _lock_stages(d: Path) -> dict:
    """The lock entries of every dvc.lock of ``d``, by stage name."""
    out = {}
    for text in _locks(d).values():
        out.update(yaml.safe_load(text)["stages"])
    return out


def _name(key: str) -> str:
    """A stage's name from DVC's key for it (``pipelines/<group>/dvc.yaml:<name>`` outside the root dvc.yaml)."""
    return key.rsplit(":", 1)[-1]


def _target(name: str) -> str:
    """What `dvc repro` accepts for the stage ``name``."""
    where = dvc_file(name)
    return name if where == "dvc.yaml" else f"{where}:{name}"


def test_every_stage_ran(repo):
    d, env, _ = repo
    st = _sh([str(BIN / "dvc"), "status", "report_mini", "--with-deps", "--json"], d, env)
    assert json.loads(st.stdout or "{}") == {}, st.stdout
    lock = _lock_stages(d)
    for name, path in (("train_mini@energy-small_cnn-0", "pipelines/train_mini-energy/dvc.lock"),
                       ("evaluate_mini_ablation@0.0-0", "pipelines/evaluate_mini_ablation/dvc.lock"),
                       ("report_mini", "dvc.lock")):  # each group's entries in its own file's lock
        assert name in yaml.safe_load((d / path).read_text())["stages"], (name, path)
    cfg_methods = ["energy", "oe", "oe_grad", "dos", "greg", "greg_plus"]
    for m in cfg_methods:
        assert f"train_mini@{m}-small_cnn-0" in lock and f"evaluate_mini@{m}-small_cnn-0" in lock
    for s in ("pretrain_mini@small_cnn", "select_mini@small_cnn", "evaluate_mini_pretrained@small_cnn",
              "certify_mini", "report_mini",
              "train_mini_ablation@0.0-0", "evaluate_mini_ablation@0.0-0", "download@fashion_mnist"):
        assert s in lock, s


def cfg_methods_of(d: Path) -> list[str]:
    return yaml.safe_load((d / "params.yaml").read_text())["suites"]["mini"]["methods"]


def test_metrics_are_sane(repo):
    d, env, _ = repo
    shown = json.loads(_sh([str(BIN / "dvc"), "metrics", "show", "--json"], d, env).stdout)
    files = next(iter(shown.values()))["data"]  # the workspace; suites that never ran are listed with an error
    shown_files = {k for k, v in files.items() if "data" in v}
    # one summary file per method and arch of the suite that ran (metrics/<suite>/summary/<method>-<arch>.json),
    # the pretrained baseline included
    assert shown_files == {f"metrics/mini/summary/{m}-small_cnn.json"
                           for m in ["pretrained", *cfg_methods_of(d)]}, files
    for m in ("energy", "greg", "greg_plus", "dos"):
        assert "fpr95" in json.dumps(files[f"metrics/mini/summary/{m}-small_cnn.json"]["data"]), m
    for f in sorted((d / "results" / "mini").glob("*.json")):
        res = json.loads(f.read_text())
        assert res["id_accuracy"] > 0.6, (f.name, res["id_accuracy"])  # 6 classes: chance is 0.17
        for sc in res["scores"].values():
            for m in list(sc["per_set"].values()) + [sc["mean"]]:
                assert all(0.0 <= v <= 1.0 for v in m.values()), (f.name, m)
    # models trained with outliers separate hand-written digits from clothing (score: -energy)
    for m in ("energy", "greg", "greg_plus"):
        res = json.loads((d / "results" / "mini" / f"mini-{m}-small_cnn-s0.json").read_text())
        assert res["scores"]["energy"]["per_set"]["digits"]["auroc"] > 0.9, (m, res["scores"]["energy"])


def test_mlflow_has_a_run_per_stage_with_metrics_and_artifacts(repo):
    d, env, _ = repo
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("greg-ood/mini")
    runs = {r.data.tags["dvc.stage"]: r for r in c.search_runs([exp.experiment_id], max_results=500)}
    for name in ("pretrain_mini@small_cnn", "select_mini@small_cnn", "train_mini@greg_plus-small_cnn-0",
                 "evaluate_mini@greg-small_cnn-0", "certify_mini", "report_mini", "train_mini_ablation@0.0-0"):
        assert name in runs, sorted(runs)
        assert runs[name].info.status == "FINISHED"
    tr = runs["train_mini@greg-small_cnn-0"]
    assert tr.info.run_name == "greg · s0 · train (mini, small_cnn)"
    assert {k: tr.data.tags[k] for k in ("suite", "method", "arch", "seed", "lambda_grad", "group")} == \
        {"suite": "mini", "method": "greg", "arch": "small_cnn", "seed": "0", "lambda_grad": "1.0", "group": "main"}
    hist = c.get_metric_history(tr.info.run_id, "loss/grad_penalty")
    assert len(hist) >= 2 and all(h.value >= 0 for h in hist)
    assert {"diag/active_frac", "eval/id_test_acc", "loss/energy_margin", "train/lr"} <= set(tr.data.metrics)
    assert tr.data.params["train.loss.lambda_grad"] == "1.0"
    assert {a.path for a in c.list_artifacts(tr.info.run_id)} >= {"curves.csv", "model.pt"}
    ev = runs["evaluate_mini@greg-small_cnn-0"]
    assert {"eval/mean/fpr95", "eval/energy/digits/auroc", "eval/id_acc"} <= set(ev.data.metrics)
    assert ev.data.params["method"] == "greg" and ev.data.tags["seed"] == "0"
    assert [a.path for a in c.list_artifacts(ev.info.run_id)] == ["results.json"]
    base = runs["evaluate_mini_pretrained@small_cnn"]
    assert base.data.params["method"] == base.data.tags["method"] == "pretrained"
    assert base.info.run_name == "pretrained · s0 · evaluate (mini, small_cnn)"
    assert "eval/mean/fpr95" in base.data.metrics
    assert {a.path for a in c.list_artifacts(runs["report_mini"].info.run_id)} >= {"report", "summary"}
    assert {r.data.tags["git.dirty"] for r in runs.values()} == {"false"}  # DVC outputs do not make the code dirty
    assert c.get_experiment_by_name("greg-ood/data") is not None


def test_tables_and_figures_exist(repo):
    d, _, _ = repo
    rep = d / "reports" / "mini"
    assert (rep / "summary.md").exists()
    assert list(rep.glob("main*.md")) and list(rep.glob("main*.tex")) and list(rep.glob("main*.csv"))
    text = next(rep.glob("main.md")).read_text()
    assert "Fashion-MNIST 6–9" in text and "positive" in text.lower()
    rows = [ln.split("|")[2].strip() for ln in text.splitlines()
            if ln.startswith("| ") and not ln.startswith("| Architecture")]
    assert rows[0] == "Pretrained (no fine-tuning)" and len(rows) == 1 + len(cfg_methods_of(d)), rows
    claims = (rep / "claims.md").read_text()
    assert "| C1 |" in claims and "Pretrained" not in claims
    assert "Pretrained" not in (rep / "paired_differences.md").read_text()
    assert list(rep.rglob("*.png"))


#: what a run may leave in the work tree besides git-ignored files: the pipeline outputs the repository commits
COMMITTED_OUTPUTS = ("dvc.lock", "pipelines/", "certify/", "metrics/", "plots/", "reports/mini/", "results/",
                     "selection/")


def test_a_run_leaves_only_committed_outputs_in_git_status(repo):
    """A fresh clone's `make mini` leaves `git status` clean: every file the run writes is either a committed pipeline
    output (here, in a repository that committed none, an untracked one) or git-ignored (mlflow.db, mlruns/,
    checkpoints/, models/, data/, DVC's cache and tmp), and no tracked source or config file changes."""
    d, env, _ = repo
    st = _sh(["git", "status", "--porcelain", "--untracked-files=all"], d, env).stdout.splitlines()
    stray = [ln for ln in st if not (ln.startswith("?? ") and ln[3:].startswith(COMMITTED_OUTPUTS))]
    assert not stray, stray
    assert any(ln[3:] == "dvc.lock" for ln in st), st
    if (ROOT / ".git").exists():  # and they are what the repository commits
        tracked = _sh(["git", "ls-files", *COMMITTED_OUTPUTS], ROOT, env).stdout.splitlines()
        assert all(any(f.startswith(p) for f in tracked) for p in COMMITTED_OUTPUTS), COMMITTED_OUTPUTS


STAGE_SCRIPTS = {"download": "download", "pretrain": "pretrain", "select": "select_aux", "train": "train",
                 "evaluate": "evaluate", "certify": "certify", "report": "report"}


def _script(stage: str) -> str:
    return f"stages/{STAGE_SCRIPTS[stage.split('@')[0].split('_')[0]]}.py"


def _status(d: Path, env: dict) -> set:
    """Stages of the mini pipeline (report_mini and everything upstream) that `dvc status` marks as changed."""
    st = _sh([str(BIN / "dvc"), "status", "report_mini", "--with-deps", "--json"], d, env)
    return {_name(k) for k in json.loads(st.stdout or "{}")}


def _finished_copy(repo, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the finished tiny pipeline (the other tests keep theirs), checked to be up to date."""
    d, env, _ = repo
    c = tmp_path / "copy"
    shutil.copytree(d, c, symlinks=True)
    env = {**env, "PYTHONPATH": str(c / "src")}
    assert _status(c, env) == set(), "the finished tiny pipeline is not up to date"
    return c, env


def _edit_and_status(c: Path, env: dict, rel: str) -> set:
    """Stages `dvc status` marks after appending a comment to ``rel``; the file is restored afterwards."""
    f = c / rel
    old = f.read_bytes()
    f.write_bytes(old + b"\n# edited by test_pipeline_e2e\n")
    try:
        return _status(c, env)
    finally:
        f.write_bytes(old)


def test_editing_a_module_marks_exactly_the_stages_that_run_it(repo, tmp_path):
    c, env = _finished_copy(repo, tmp_path)
    stages = set(_lock_stages(c))
    closure = {s: set(closure_relative(c / f"stages/{s}.py", c, src=c / "src")) for s in STAGE_SCRIPTS.values()}
    runs = {st: closure[Path(_script(st)).stem] for st in stages}

    def own(script: str, *others: str) -> str:
        """A library module only ``script`` imports (among ``others``), else the script itself."""
        only = closure[script] - set().union(*(closure[o] for o in others))
        return next((m for m in sorted(only) if m.startswith("src/")), f"stages/{script}.py")

    target = own("select_aux", *(s for s in closure if s != "select_aux"))
    changed = _edit_and_status(c, env, target)
    assert changed == {st for st in stages if st.startswith("select_")}, (target, sorted(changed))
    assert changed == {st for st, files in runs.items() if target in files}

    # a library module select shares with the fewest other stages marks every stage that imports it, select included
    target = min(sorted(m for m in closure["select_aux"] if m.startswith("src/")),
                 key=lambda m: sum(m in files for files in closure.values()))
    changed = _edit_and_status(c, env, target)
    assert changed == {st for st, files in runs.items() if target in files}, (target, sorted(changed))
    assert any(st.startswith("select_") for st in changed), (target, sorted(changed))

    target = own("evaluate", "train", "pretrain")
    changed = _edit_and_status(c, env, target)
    assert changed == {st for st, files in runs.items() if target in files}, (target, sorted(changed))
    assert any(st.startswith("evaluate_") for st in changed), (target, sorted(changed))
    assert not any(st.startswith(("train_", "pretrain_")) for st in changed), (target, sorted(changed))
    assert _status(c, env) == set()  # restored: nothing to re-run


def test_fresh_rerun_leaves_dvc_lock_unchanged(repo, tmp_path):
    """Outputs are deterministic: re-running stages from nothing (no resume checkpoint) rewrites the dvc.lock files
    with the same bytes, so a fresh clone's `make mini` leaves `git status` clean."""
    c, env = _finished_copy(repo, tmp_path)
    before = _locks(c)
    shutil.rmtree(c / "checkpoints")
    # the copy's MLflow store still names the original's artifact folders, which the stages refuse to write into
    _sh([sys.executable, "-m", "greg_ood.run.tracking", "relocate"], c, env)
    _sh([str(BIN / "dvc"), "repro", "--force", "--no-run-cache", "--single-item", "pretrain_mini@small_cnn",
         "select_mini@small_cnn", _target("train_mini@greg-small_cnn-0"), _target("evaluate_mini@greg-small_cnn-0"),
         "evaluate_mini_pretrained@small_cnn", "certify_mini", "report_mini"], c, env)
    assert _locks(c) == before


def test_changing_lambda_grad_invalidates_only_greg(repo):
    d, env, _ = repo
    raw = yaml.safe_load((d / "params.yaml").read_text())
    raw["suites"]["mini"]["method_params"]["greg"] = {"loss": {"lambda_grad": 2.0}}  # GReg's own value
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    st = json.loads(_sh([str(BIN / "dvc"), "status", "--json"], d, env).stdout)
    changed = {_name(k) for k in st}
    assert "train_mini@greg-small_cnn-0" in changed
    for other in ("train_mini@energy-small_cnn-0", "train_mini@greg_plus-small_cnn-0", "pretrain_mini@small_cnn",
                  "evaluate_mini@energy-small_cnn-0"):
        assert other not in changed, (other, sorted(changed))
    _sh(["git", "checkout", "params.yaml"], d, env)


def test_dvc_exp_run_set_param(repo):
    d, env, _ = repo
    _sh(["git", "add", "-A"], d, env)
    _sh(["git", "commit", "-qm", "results"], d, env, check=False)
    r = _sh([str(BIN / "dvc"), "exp", "run", "-n", "lg3", "-S", "+suites.mini.method_params.greg.loss.lambda_grad=3",
             "report_mini"], d, env, timeout=1500)
    assert "train_mini@greg-small_cnn-0" in r.stdout + r.stderr
    assert not re.search(r"Running stage '[^']*train_mini@energy-small_cnn-0'", r.stdout)
    shown = _sh([str(BIN / "dvc"), "exp", "show", "--json"], d, env).stdout
    assert "lg3" in shown


def test_queued_sweep_runs_in_parallel_and_builds_ablation_across_experiments(repo):
    import time

    d, env, _ = repo
    dvc = str(BIN / "dvc")
    _sh(["git", "add", "-A"], d, env)
    _sh(["git", "commit", "-qm", "before sweep"], d, env, check=False)
    _sh([dvc, "exp", "run", "--queue", "-S", "++suites.mini.method_params.greg.loss.lambda_grad=0.5,2",
         "report_mini"], d, env)
    _sh([dvc, "queue", "start", "-j", "2"], d, env)
    deadline = time.time() + 1500
    while time.time() < deadline:
        st = _sh([dvc, "queue", "status"], d, env).stdout
        if "Queued" not in st and "Running" not in st:
            break
        time.sleep(5)
    assert "Failed" not in st, st + "".join(
        p.read_text()[-3000:] for p in (d / ".dvc" / "tmp" / "exps" / "run").rglob("*.out"))
    assert st.count("Success") >= 2, st
    shown = _sh([dvc, "exp", "show", "--csv"], d, env).stdout
    assert "0.5" in shown and ",2," in shown, shown[-2000:]
    _sh([sys.executable, "-m", "greg_ood.cli.exps", "ablation", "--suite", "mini", "--method", "greg",
         "--out", str(d / "queue_ablation")], d, env)
    table = (d / "queue_ablation" / "ablation_across_experiments.md").read_text()
    rows = [ln.split("|") for ln in table.splitlines() if ln.startswith("|") and "GReg" in ln]
    lambdas = {r[3].strip() for r in rows}
    assert {"0.5", "2"} <= lambdas, table


def test_dvc_plots_show_renders_combined_plots(repo):
    """`dvc plots show` (the README's command) draws the three combined plots of the suite that ran, every method in
    each, and no panel for the suites that never ran."""
    d, env, _ = repo
    out = d / "dvc_plots_test"
    _sh([str(BIN / "dvc"), "plots", "show", "-o", str(out)], d, env)
    html = (out / "index.html").read_text()
    shown = json.loads(_sh([str(BIN / "dvc"), "plots", "show", "--json"], d, env).stdout)
    drawn = {k for k, v in shown["data"].items() if v}  # {"data": {plot id: [rendered]}, "errors": [...]}
    assert drawn == {"mini small_cnn s0 training loss (total) by method", "mini small_cnn s0 ID input-gradient norm "
                     "by method", "mini small_cnn s0 ROC on the headline set by method"}, sorted(drawn)
    for title in drawn:
        assert title in html
        files = {row["filename"] for row in shown["data"][title][0]["content"]["data"]["values"]}
        assert len(files) == len(cfg_methods_of(d)), (title, files)  # one line per method
    assert "cifar10 " not in html


def _readme_commands(prefix: str) -> list[str]:
    """The README's command lines that start with ``prefix`` (inline comments dropped)."""
    import shlex

    lines = [ln.split("  #")[0].strip() for ln in (ROOT / "README.md").read_text().splitlines()]
    cmds = [ln for ln in lines if ln.startswith(prefix)]
    assert cmds, f"the README has no `{prefix}` recipe"
    return [shlex.split(c) for c in cmds]


def test_readme_metrics_recipe_prints_every_method(repo):
    d, env, _ = repo
    methods = ["energy", "oe", "oe_grad", "dos", "greg", "greg_plus"]
    for cmd in _readme_commands("dvc metrics show"):
        out = _sh([str(BIN / "dvc"), *cmd[1:]], d, env).stdout
        rows = {ln.split("|")[1].strip(): ln for ln in out.splitlines() if ln.startswith("| metrics/")}
        for m in methods:
            row = rows[f"metrics/mini/summary/{m}-small_cnn.json"]
            assert any(c.strip().replace(".", "").isdigit() for c in row.split("|")[2:]), row
        assert not any(k.startswith(("metrics/cifar", "metrics/imagenet")) for k in rows)  # no empty suite rows
    # the README's `dvc exp show` recipe runs in tests/test_recipes_real_repo.py, on a copy of the real repository
