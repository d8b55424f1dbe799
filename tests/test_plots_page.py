"""`make plots` / `make plots-diff`: offline pages (no external script) whose legends name method, seed and λ, that
leave out curves of runs the configuration no longer declares, and compare revisions; the vendored DVC HTML template
and the plot template's file-name labels for plain `dvc plots diff`."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from greg_ood.run import config as C
from greg_ood.cli.plots_page import (VENDORED, existing_plots, external_references, offline_template, relabel,
                                     run_label, run_labels, run_of)

ROOT = Path(__file__).resolve().parents[1]


def test_external_reference_detector_can_fail():
    assert external_references('<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>')
    assert external_references("<link rel=stylesheet href='//cdn.example/x.css'>")
    assert not external_references('<script type="text/javascript">var u = "https://vega.github.io/";</script>')


def test_only_plots_with_data_are_shown(tmp_path):
    (tmp_path / "a.csv").write_text("step,total\n1,2\n")
    (tmp_path / "dvc.yaml").write_text(
        "plots:\n  - mini loss by method:\n      x: step\n      y: {a.csv: total, gone.csv: total}\n"
        "  - cifar10 loss by method:\n      x: step\n      y: {b.csv: total}\n  - a.csv:\n      y: total\n")
    assert existing_plots(tmp_path / "dvc.yaml") == ["mini loss by method", "a.csv"]
    assert existing_plots(tmp_path / "dvc.yaml", "mini") == ["mini loss by method"]
    assert existing_plots(tmp_path / "dvc.yaml", "cifar10") == []


def test_labels_name_method_seed_and_resolved_lambda():
    assert run_of("metrics/mini/train/mini-greg_plus-small_cnn-s2.train.csv") == "mini-greg_plus-small_cnn-s2"
    assert run_of("mini-greg-small_cnn-s0-lg0.1.json") == "mini-greg-small_cnn-s0-lg0.1"
    assert run_label("greg", 0, 10.0) == "greg · s0 · λ=10" and run_label("pretrained", None, None) == "pretrained"
    cfg = C.load(ROOT / "params.yaml")
    labels = run_labels(cfg)
    s = cfg.suite("mini")
    for m in s.methods:
        lam = cfg.experiment("mini", m, s.archs[0], s.seeds[0]).train.loss.lambda_grad
        assert labels[f"mini-{m}-{s.archs[0]}-s{s.seeds[0]}"] == f"{m} · s{s.seeds[0]} · λ={lam:g}"
    lg = s.ablation.lambda_grad[0]
    abl = next(e for e in cfg.experiments("mini") if e.group == "ablation" and e.train.loss.lambda_grad == lg)
    assert labels[abl.name] == f"{s.ablation.method} · s{abl.seed} · λ={lg:g}"
    assert labels[f"mini-pretrained-{s.archs[0]}"] == "pretrained"


def _spec(*rows):
    return {"mark": "line", "data": {"values": [dict(zip(("rev", "filename", "step", "total"), r)) for r in rows]}}


def test_relabel_keeps_only_declared_runs_of_each_revision():
    labels = {"workspace": {"mini-greg-a-s0": "greg · s0 · λ=3"},
              "HEAD": {"mini-greg-a-s0": "greg · s0 · λ=1", "mini-oe-a-s0": "oe · s0 · λ=0"},
              "old": None}
    spec = _spec(("workspace", "mini-greg-a-s0.train.csv", 1, 0.5),
                 ("workspace", "mini-oe-a-s0.train.csv", 1, 0.7),  # stale: the workspace's config dropped oe
                 ("HEAD", "mini-greg-a-s0.train.csv", 1, 0.6),
                 ("HEAD", "mini-oe-a-s0.train.csv", 1, 0.8),
                 ("old", "mini-x-a-s0.train.csv", 1, 0.9))  # unreadable params: kept, unlabelled
    out = relabel(spec, labels)["data"]["values"]
    assert [(v["rev"], v.get("run"), v["total"]) for v in out] == [
        ("workspace", "greg · s0 · λ=3", 0.5), ("HEAD", "greg · s0 · λ=1", 0.6), ("HEAD", "oe · s0 · λ=0", 0.8),
        ("old", None, 0.9)]
    assert relabel(_spec(("workspace", "mini-oe-a-s0.json", 0, 0)), labels) is None  # nothing left: no panel


def _svg_labels(spec: dict) -> list[str]:
    import vl_convert

    svg = vl_convert.vegalite_to_svg(spec, vl_version="5.21")
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


def test_plot_template_labels_curves_from_file_names():
    """Plain `dvc plots diff` (no relabelling): the template itself turns file names into method · seed · λ."""
    pytest.importorskip("vl_convert")
    tpl = (ROOT / ".dvc" / "plots" / "by_file.json").read_text()
    rows = [{"filename": f, "step": 1, "total": t, "rev": "HEAD"} for f, t in
            [("metrics/mini/train/mini-greg_plus-small_cnn-s0.train.csv", 1.0),
             ("mini-greg-small_cnn-s1-lg0.1.train.csv", 2.0)]]
    filled = (tpl.replace('"<DVC_METRIC_DATA>"', json.dumps(rows)).replace("<DVC_METRIC_X>", "step")
              .replace("<DVC_METRIC_Y>", "total").replace("<DVC_METRIC_TITLE>", "t")
              .replace("<DVC_METRIC_X_LABEL>", "step").replace("<DVC_METRIC_Y_LABEL>", "total"))
    texts = _svg_labels(json.loads(filled))
    assert "greg_plus · s0" in texts and "greg · s1 · λ=0.1" in texts
    assert not any(".csv" in t for t in texts)


def test_vendored_dvc_template_is_offline_and_current():
    """`.dvc/config` points `dvc plots` at the vendored page: --write-template's page (the same head; the bundle may
    come from another vl-convert release), with DVC's placeholder, the libraries inlined and no external reference."""
    pytest.importorskip("vl_convert")
    assert "html_template = plots/offline.html" in (ROOT / ".dvc" / "config").read_text()
    vendored = (ROOT / VENDORED).read_text(encoding="utf8")
    fresh = offline_template()
    head = fresh[:fresh.index("<script")]
    assert vendored.startswith(head) and vendored.endswith(fresh[fresh.index("</script>"):])
    assert "{plot_divs}" in vendored and "vegaEmbed" in vendored and len(vendored) > 200_000
    assert external_references(vendored) == []


def _scratch(tmp_path: Path, env: dict):
    run = lambda *a: subprocess.run(a, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # noqa: E731
    assert run("git", "init", "-q").returncode == 0 and run("dvc", "init", "-q").returncode == 0
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots", dirs_exist_ok=True)
    shutil.copy(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")
    return run


def test_offline_pages_show_declared_runs_with_labels_and_compare_revisions(tmp_path):
    pytest.importorskip("vl_convert")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = _scratch(tmp_path, env)
    cfg = C.load(tmp_path / "params.yaml")
    s = cfg.suite("mini")
    greg = cfg.experiment("mini", "greg", s.archs[0], s.seeds[0])
    lam = greg.train.loss.lambda_grad
    train = tmp_path / "metrics" / "mini" / "train"
    train.mkdir(parents=True)
    (train / f"{greg.name}.train.csv").write_text("step,total\n1,2.0\n2,1.5\n3,0.4321987\n")
    stale = "mini-removed_method-small_cnn-s0"  # a committed curve of a method no longer in the suite
    (train / f"{stale}.train.csv").write_text("step,total\n1,9.0\n2,0.9876543\n")
    (tmp_path / "dvc.yaml").write_text(
        "plots:\n  - mini loss (total) by method:\n      template: by_file\n      x: step\n      y:\n"
        f"        metrics/mini/train/{greg.name}.train.csv: total\n"
        f"        metrics/mini/train/{stale}.train.csv: total\n"
        "  - cifar10 loss:\n      x: step\n      y: {gone.csv: loss}\n")
    # plain DVC with the repository's configuration: offline too (the vendored template)
    plain = run("dvc", "plots", "show", "-o", "plain")
    assert plain.returncode == 0, plain.stderr
    assert external_references((tmp_path / "plain" / "index.html").read_text()) == []

    r = run(sys.executable, "-m", "greg_ood.cli.plots_page", "-o", "offline")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "offline" / "index.html").read_text()
    assert external_references(page) == [] and "vegaEmbed(" in page and len(page) > 200_000
    assert json.dumps(f"greg · s{s.seeds[0]} · λ={lam:g}") in page and "0.4321987" in page
    assert "removed_method" not in page and "0.9876543" not in page  # the stale curve is left out
    assert "cifar10" not in page  # a plot without data leaves no empty slot

    # compare with the committed revision after a λ edit: both revisions, each labelled with its own λ
    assert run("git", "add", "-A").returncode == 0 and run("git", "commit", "-qm", "base").returncode == 0
    text = (tmp_path / "params.yaml").read_text()
    import yaml

    raw = yaml.safe_load(text)
    raw["suites"]["mini"]["method_params"].setdefault("greg", {}).setdefault("loss", {})["lambda_grad"] = 7.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (train / f"{greg.name}.train.csv").write_text("step,total\n1,2.0\n2,1.0\n3,0.1234567\n")
    r = run(sys.executable, "-m", "greg_ood.cli.plots_page", "-o", "diff", "--diff", "HEAD")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "diff" / "index.html").read_text()
    assert json.dumps(f"greg · s{s.seeds[0]} · λ={lam:g}") in page and json.dumps(f"greg · s{s.seeds[0]} · λ=7") in page
    assert '"rev": "HEAD"' in page and '"rev": "workspace"' in page and "0.1234567" in page and "0.4321987" in page
    assert "removed_method" not in page and external_references(page) == []
