"""Smoke test of the benchmark (runs, writes its report); no timing assertions."""
from __future__ import annotations

import json

from bench import step_cost as bench


def test_bench_smoke_runs_and_writes_reports(tmp_path):
    # one intra-op thread: the smoke run stays fast even when the machine is busy (restored afterwards)
    res = bench.run(smoke=True, out=tmp_path, threads=1, log=lambda *a, **k: None)
    assert list(res["models"]) == ["small_cnn"]
    r = res["models"]["small_cnn"]
    for key in ("energy", "greg", "greg_plus", "official_greg", "official_greg_plus"):
        assert r["seconds_per_step"][key] > 0
    assert set(r["targets"]) >= {"greg_step_le_1.15x3.3x_energy", "sampler_ge_5x_sklearn"}
    assert r["sampler"]["inertia_ratio"] > 0 and r["eval_images_per_s"] > 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["cpu-smoke.json", "cpu-smoke.md"]
    assert json.loads((tmp_path / "cpu-smoke.json").read_text())["machine"]["torch"]
    assert "Seconds per training step" in (tmp_path / "cpu-smoke.md").read_text()
