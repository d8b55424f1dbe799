"""The README quotes generated results (claims tables, main tables) verbatim: no number or verdict typed by hand;
it stays short, and every command, stage name, path and link in it resolves on this repository (every suite)."""
from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("readme_sync", ROOT / "tools" / "readme_sync.py")
readme_sync = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_sync)


def test_readme_generated_blocks_match_their_files():
    assert "docs/results.md" in readme_sync.SYNCED
    for page in readme_sync.SYNCED:
        text = (ROOT / page).read_text()
        blocks = readme_sync.BLOCK.findall(text)
        assert blocks, f"{page} quotes no generated block"
        assert readme_sync.sync(text) == text, f"{page} is out of date: run `python tools/readme_sync.py`"
    assert "<!-- generated: reports/fmnist/claims_readme.md -->" in (ROOT / "README.md").read_text()


def test_sync_replaces_a_stale_block_and_names_a_missing_file(tmp_path):
    (tmp_path / "t.md").write_text("| a | b |\n")
    stale = "x\n<!-- generated: t.md -->\nold\n<!-- /generated -->\ny\n"
    assert readme_sync.sync(stale, tmp_path) == "x\n<!-- generated: t.md -->\n| a | b |\n<!-- /generated -->\ny\n"
    with pytest.raises(FileNotFoundError, match="missing.md"):
        readme_sync.sync("<!-- generated: missing.md -->\n<!-- /generated -->", tmp_path)


def test_pending_block_says_not_generated_until_its_file_exists(tmp_path):
    block = "<!-- generated: n.md pending -->\nold\n<!-- /generated -->"
    want = "<!-- generated: n.md pending -->\n" + readme_sync.pending_text("n.md") + "\n<!-- /generated -->"
    assert readme_sync.sync(block, tmp_path) == want and "Not generated yet" in want
    (tmp_path / "n.md").write_text("* line\n")
    assert readme_sync.sync(want, tmp_path) == "<!-- generated: n.md pending -->\n* line\n<!-- /generated -->"


# ------------------------------------------------------------------ the README's commands and names, on this repo
README = ROOT / "README.md"
MAX_LINES = 250
#: a run's own folders: named in the README before a run creates them (git-ignored or a stage's out folder)
RUN_ROOTS = ("reports", "certify", "metrics", "results", "plots", "selection", "models", "data", "checkpoints",
             "dvc_plots")


def readme_commands(text: str) -> list[str]:
    """Every command the README tells a reader to type: lines of its bash blocks (comments dropped) and inline code
    spans that start like a command."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        cmds += [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    for span in re.findall(r"`([^`\n]+)`", text):
        if re.match(r"(make|dvc|python|source) ", span):
            cmds.append(span.strip())
    return cmds


def readme_stage_names(text: str) -> set[str]:
    """Stage names the README writes out in full (templates with <...> are left out)."""
    spans = re.findall(r"`([^`\n]+)`", text)
    words = {w for s in spans for w in re.split(r"[\s,]+", s)}
    return {w for w in words if "<" not in w and re.fullmatch(
        r"(?:pipelines/\w+/dvc\.yaml:)?(?:download|pretrain|select|train|evaluate|certify|report)\w*(?:@[\w.-]+)?", w)
        and ("@" in w or "_" in w)}


@functools.lru_cache(maxsize=1)
def dvc_stages() -> frozenset[str]:
    """Every stage address of this repository, as DVC's own index lists it (all suites, all pipelines files)."""
    r = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--all", "--name-only"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return frozenset(ln.strip() for ln in r.stdout.splitlines() if ln.strip())


def stage_exists(name: str) -> bool:
    """``name`` is an address ``dvc repro`` accepts (a group stage with its file)."""
    return name in dvc_stages()


def stage_named(name: str) -> bool:
    """``name`` is a stage's address or, for a stage of a group file, its bare name (as its MLflow tag writes it)."""
    return stage_exists(name) or any(s.endswith(":" + name) for s in dvc_stages())


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), re.M))


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines (at most {MAX_LINES}: move detail to docs/)"


def test_every_suite_is_declared_and_has_a_report_stage():
    suites = yaml.safe_load((ROOT / "params.yaml").read_text())["suites"]
    assert {"mini", "fmnist", "cifar10", "cifar100", "imagenet"} <= set(suites)
    for s in suites:
        assert stage_exists(f"report_{s}"), s


def test_readme_commands_resolve_on_this_repository():
    """make targets exist; python -m modules import; dvc commands parse with DVC's own parser and name stages DVC
    lists; -S edits name keys that validate; file arguments exist."""
    from dvc.cli import parse_args

    from greg_ood.run import config as C

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    cmds = readme_commands(README.read_text())
    assert any(c.startswith("make mini") for c in cmds) and any(c.startswith("dvc ") for c in cmds)
    for cmd in cmds:
        argv = shlex.split(cmd)
        if argv[0] == "make":
            for t in [a for a in argv[1:] if "=" not in a]:
                assert t in make_targets(), f"README: `{cmd}`: no make target {t!r}"
            if "ARGS=" in cmd:
                inner = shlex.split(next(a for a in argv if a.startswith("ARGS="))[5:])
                parse_args(inner)
        elif argv[0] == "python" and argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, f"README: `{cmd}`: no module {argv[2]}"
        elif argv[0] == "python":
            assert (ROOT / argv[1]).is_file(), f"README: `{cmd}`: no file {argv[1]}"
        elif argv[0] == "source":
            assert argv[1] == ".venv/bin/activate"  # made by `make setup`
        elif argv[0] == "dvc":
            args = parse_args(argv[1:])
            for t in getattr(args, "targets", None) or []:
                if t != "dvc.yaml":
                    assert stage_exists(t), f"README: `{cmd}`: DVC has no stage {t!r}"
            for edit in getattr(args, "set_param", None) or []:
                key, value = edit.split("=", 1)
                r = copy.deepcopy(raw)
                *path, leaf = key.split(".")
                node = r
                for k in path:
                    node = node.setdefault(k, {})
                node[leaf] = yaml.safe_load(value)
                C.validate(r)  # raises ConfigError naming the key when the README's edit is not valid
        else:
            raise AssertionError(f"README: `{cmd}`: unknown kind of command")


def test_readme_stage_names_exist():
    names = readme_stage_names(README.read_text())
    assert "report_cifar10" in names
    missing = sorted(n for n in names if not stage_named(n))
    assert not missing, f"README names stages DVC does not have: {missing}"


def _is_run_output(rel: str, suites) -> bool:
    parts = rel.strip("/").split("/")
    if parts[0] in ("models", "data", "checkpoints", "dvc_plots"):
        r = subprocess.run(["git", "check-ignore", "-q", parts[0] + "/x"], cwd=ROOT)
        return r.returncode == 0
    return parts[0] in RUN_ROOTS and len(parts) >= 2 and (parts[1] in suites or parts[1].startswith("<"))


def test_readme_paths_and_links_exist():
    text = README.read_text()
    suites = yaml.safe_load((ROOT / "params.yaml").read_text())["suites"]
    links = [u.split("#")[0] for u in re.findall(r"\]\(([^)\s]+)\)", text) if not u.startswith(("http", "#"))]
    assert "docs/browsing.md" in links and "docs/scale-out.md" in links and "docs/reliability.md" in links
    for u in links:
        assert (ROOT / u).exists(), f"README links {u}, which does not exist"
    spans = [s for s in re.findall(r"`([^`\n]+)`", text)
             if " " not in s and ":" not in s and "=" not in s and "/" in s and not s.startswith(("http", "-"))]
    assert "reports/bench/" in spans
    for s in spans:
        if "<" in s:
            assert (ROOT / s.split("<")[0]).exists() or _is_run_output(s, suites), s
            continue
        assert (ROOT / s).exists() or _is_run_output(s, suites), f"README names {s}, which does not exist"


def test_docs_pages_open_with_what_they_are_for():
    for page in ("docs/pipeline.md", "docs/data.md", "docs/tracking.md", "docs/results.md", "docs/differences.md",
                 "reports/bench/README.md"):
        lines = (ROOT / page).read_text().splitlines()
        assert lines[0].startswith("# ") and lines[2].startswith("What this page is for:"), page


def test_docs_stage_names_exist():
    """The pages moved out of the README name real stages too (a group stage with its file)."""
    for page in ("docs/pipeline.md", "docs/tracking.md", "docs/data.md", "docs/results.md", "reports/bench/README.md"):
        missing = sorted(n for n in readme_stage_names((ROOT / page).read_text()) if not stage_named(n))
        assert not missing, f"{page} names stages DVC does not have: {missing}"
