"""The README's λ recipes, as written, on a copy of the real repository (every suite declared), offline.

The copy has the repository's params.yaml with only `mini` shrunk (sizes and lengths, one seed, two methods: Energy
without the gradient term and GReg with it, one λ-ablation point), written back the way DVC writes params.yaml, and its
dvc.yaml files regenerated for those methods (`make dvc.yaml`). After the tiny `mini` has run and is committed, the
README's `dvc exp run <target> -S ...` recipe must re-run exactly GReg's train stage and what follows it (not Energy,
not the ablation point, whose λ is its own, not the pretraining), leave only the edited value in `git diff
params.yaml`, and the README's comparison commands (`dvc exp show`, `dvc metrics diff`, `dvc plots diff`) must run
offline and show both λ values.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.scratch_repo import BIN, TINY, copy_inputs, git_commit_all, scratch_env, set_dotted

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: mini's sizes shrunk as in the tiny end-to-end test, one seed, Energy and GReg, one ablation point; nothing else
SHRINK = {**TINY, "suites.mini.methods": ["energy", "greg"], "suites.mini.grad_ablation.pairs": [["energy", "greg"]]}
#: the stages a change of the shared λ must re-run in that copy: GReg's, and what follows it
RERUN = {"train_mini@greg-small_cnn-0", "evaluate_mini@greg-small_cnn-0", "certify_mini", "report_mini"}


def readme_lambda_recipes() -> list[str]:
    """The command lines of the README's section on ablating λ (its ```bash block; comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Ablating[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "the README has no '## Ablating ...' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the README's λ section has no ```bash block"
    return [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip()
            and not ln.lstrip().startswith("#")]


def _sh(args, cwd: Path, env: dict, timeout: int = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-4000:]}\n"
                             f"{r.stderr[-6000:]}")
    return r


def _dvc(cmd: str) -> list[str]:
    """A README `dvc ...` command line as arguments, run with this environment's dvc."""
    args = shlex.split(cmd)
    assert args[0] == "dvc", cmd
    return [str(BIN / "dvc"), *args[1:]]


def shrink(params: Path, overrides: dict) -> None:
    """Set each dotted key of ``overrides`` in ``params`` the way `dvc exp run -S` writes the file (DVC's own YAML
    round trip), so that a later -S edit changes nothing but its value."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(params) as raw:
        for key, value in overrides.items():
            set_dotted(raw, key, value)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    copy_inputs(d)
    # the other offline suite's committed summaries, as a clone has them (the copy re-runs only mini)
    shutil.copytree(ROOT / "metrics" / "fmnist" / "summary", d / "metrics" / "fmnist" / "summary")
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    shrink(d / "params.yaml", SHRINK)
    env = scratch_env(d)
    _sh([BIN / "python", "-m", "greg_ood.run.dvcgen", "params.yaml"], d, env)  # train stages of the suite's methods
    git_commit_all(d, env, "the real repository, mini shrunk")
    _sh([BIN / "python", "-m", "greg_ood.cli.repro", "report_mini", "--jobs", "2"], d, env, timeout=3600)
    git_commit_all(d, env, "tiny mini results")
    return d, env


def test_every_suite_is_declared_and_recipes_name_their_target():
    """The copy is the real repository's pipeline (no one-suite fixture); every `dvc exp run` recipe names a target,
    so it never tries to rebuild the suites that need the internet."""
    from greg_ood.run import config as C

    assert set(C.load(ROOT / "params.yaml").params.suites) == {"mini", "fmnist", "cifar10", "cifar100", "imagenet"}
    runs = [c for c in readme_lambda_recipes() if c.startswith("dvc exp run")]
    assert runs, readme_lambda_recipes()
    for cmd in runs:
        targets = [a for a in shlex.split(cmd)[3:] if not a.startswith("-") and "=" not in a]
        assert targets and all(t.startswith("report_") for t in targets), cmd


def test_readme_lambda_recipe_reruns_exactly_what_lambda_changes(repo):
    d, env = repo
    cmd = next(c for c in readme_lambda_recipes() if c.startswith("dvc exp run"))
    key, value = next(a for a in shlex.split(cmd) if "=" in a and not a.startswith("-")).lstrip("+").split("=")
    assert key == "suites.mini.train.loss.lambda_grad", cmd  # the shared λ: every method with the gradient term
    r = _sh(_dvc(cmd), d, env, timeout=3600)
    out = r.stdout + r.stderr
    ran = {s.rsplit(":", 1)[-1] for s in re.findall(r"Running stage '([^']+)'", out)}
    # not Energy (no gradient term), not the ablation point (its λ is its own), not pretraining or selection
    assert ran == RERUN, (sorted(ran), out[-3000:])

    # params.yaml: only the edited value
    diff = _sh(["git", "diff", "-U0", "params.yaml"], d, env).stdout.splitlines()
    changed = [ln for ln in diff if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert len(changed) == 2 and re.fullmatch(r"- +lambda_grad: 1\.0", changed[0]) and \
        re.fullmatch(rf"\+ +lambda_grad: {re.escape(value)}", changed[1]), diff

    # the comparison: the README's commands, offline, show both λ values side by side
    for c in readme_lambda_recipes()[1:]:
        r = _sh(_dvc(c), d, env)
        out = r.stdout + r.stderr
        if c.startswith(("dvc exp show", "dvc metrics")):  # the paper suites' summaries are not declared metrics
            assert "failed to load" not in out, (c, out)
        if c.startswith("dvc exp show"):  # the λ column: 1 on the commit, the new value in the experiment
            table = [[cell.strip() for cell in ln.split("|")[1:-1]] for ln in out.splitlines() if ln.startswith("|")]
            col = table[0].index(key)
            assert {float(row[col]) for row in table[2:]} == {1.0, float(value)}, out
            assert any(c.startswith("metrics/mini/summary/greg-") for c in table[0]), table[0]
        if c.startswith("dvc metrics diff"):
            assert "headline_fpr95" in out and "greg" in out, out
        if c.startswith("dvc plots diff"):
            assert (d / "dvc_plots" / "index.html").is_file() or "file://" in out, out
