"""`make plots`: the `dvc plots show` page with Vega inlined reads offline (no external script) and holds the plot."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from greg_ood.cli.plots_page import existing_plots, external_references


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


def test_offline_page_has_no_external_script_and_embeds_the_plot(tmp_path):
    pytest.importorskip("vl_convert")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run = lambda *a: subprocess.run(a, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    assert run("git", "init", "-q").returncode == 0 and run("dvc", "init", "-q").returncode == 0
    (tmp_path / "curve.csv").write_text("step,loss\n1,2.0\n2,1.5\n3,1.25\n")
    (tmp_path / "dvc.yaml").write_text("plots:\n  - mini loss (total) by method:\n      x: step\n      y: {curve.csv: loss}\n"
                                       "  - cifar10 loss:\n      x: step\n      y: {gone.csv: loss}\n")
    default = run("dvc", "plots", "show", "-o", "cdn")
    assert default.returncode == 0, default.stderr
    assert external_references((tmp_path / "cdn" / "index.html").read_text())  # DVC's own page needs the internet
    r = run(sys.executable, "-m", "greg_ood.cli.plots_page", "-o", "offline")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "offline" / "index.html").read_text()
    assert external_references(page) == []
    assert "vegaEmbed(" in page and "1.25" in page and 'id = "mini_loss__total__by_method"' in page
    assert "cifar10" not in page  # a plot without data leaves no empty slot
    assert "vega-embed" in page.lower() and len(page) > 200_000  # the libraries are inlined
