"""`make gpu-check` on a machine without CUDA: one line saying so, then the CPU smoke path of the same script (every
part: benchmark, bf16 check, epoch slice, profiler, projection) writes its report; plus the parts with known answers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch

from greg_ood.run import config as C
from bench import gpu_check as G

ROOT = Path(__file__).resolve().parents[1]


def test_merged_busy_counts_overlapping_kernels_once():
    assert G.merged_busy_us([]) == 0.0
    assert G.merged_busy_us([(20, 30), (0, 10), (5, 15)]) == 25.0  # [0, 15] + [20, 30]
    assert G.merged_busy_us([(0, 10), (2, 3), (10, 12)]) == 12.0


def test_projection_arithmetic_with_known_step_times():
    cfg = C.load(ROOT / "params.yaml")
    st = {"energy": 0.1, "greg": 0.3, "greg_plus": 0.5}
    timed = {a: {"seconds_per_step": st, "eval_images_per_s": 1000.0} for a in cfg.suite("cifar10").archs}
    p = G.project_suite(cfg, "cifar10", timed)
    assert p["complete"] and p["counts"]["train"] == 50000 and p["counts"]["aux"] == 300000
    s = cfg.suite("cifar10")
    spe = math.ceil(50000 / 64)
    greg_plus = p["rows"]["train (main, greg_plus step)"]
    assert greg_plus["stages"] == len(s.archs) * len(s.seeds)
    assert greg_plus["steps"] == greg_plus["stages"] * 60 * spe
    assert greg_plus["seconds"] == pytest.approx(greg_plus["steps"] * 0.5)
    dos = p["rows"]["train (main, dos step)"]  # energy step + GReg+'s selection overhead = 0.1 + 0.5 - 0.3
    assert dos["seconds"] == pytest.approx(dos["steps"] * 0.3)
    pre = p["rows"]["pretrain"]  # 100 epochs of ceil(50000 / 128) steps at the energy-step cost (128 images)
    assert pre["steps"] == len(s.archs) * 100 * math.ceil(50000 / 128)
    assert pre["seconds"] == pytest.approx(pre["steps"] * 0.1)
    assert p["total_s"] == pytest.approx(sum(r["seconds"] for r in p["rows"].values()))
    assert not G.project_suite(cfg, "cifar10", {})["complete"]


def test_rel_l2_of_known_perturbations_and_of_bf16_rounding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10000, generator=g)
    assert G.rel_l2(x, 1.05 * x) == pytest.approx(0.05, rel=1e-5)
    u = torch.randn(10000, generator=g)
    ortho = u - (u @ x) / (x @ x) * x  # orthogonal to x, scaled to 0.2 ||x||: rel_l2 = 0.2 exactly
    assert G.rel_l2(x, x + 0.2 * x.norm() / ortho.norm() * ortho) == pytest.approx(0.2, rel=1e-4)
    # bf16 keeps 8 significant bits: round to nearest errs by at most 2^-9 relative per element, so also in L2
    err = G.rel_l2(x, x.bfloat16().float())
    assert 2**-12 < err <= 2**-9


def test_compare_to_fp32_judges_by_the_tolerances():
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(1000, generator=g)
    loss = {"ce": 2.0, "energy": 4.0, "grad": 0.0, "total": 6.0}
    same = G.compare_to_fp32(loss, grad, dict(loss), grad.clone())
    assert same["pass"] and same["grad"]["rel_l2"] == 0 and same["grad"]["cosine"] == pytest.approx(1.0)
    assert same["grad"]["numel"] == 1000 and same["loss"]["ce"]["rel_diff"] == 0
    # a loss 4 % off passes (tolerance 5 %), 6 % off fails; the zero penalty may differ by 1e-6 absolute
    assert G.compare_to_fp32(loss, grad, {**loss, "ce": 2.08, "grad": 5e-7}, grad)["pass"]
    off = G.compare_to_fp32(loss, grad, {**loss, "ce": 2.12}, grad)
    assert not off["pass"] and off["loss"]["ce"]["rel_diff"] == pytest.approx(0.06)
    # a gradient 5 % larger: rel_l2 0.05, cosine 1 -> passes; 15 % larger: rel_l2 0.15 > 0.10 -> fails
    assert G.compare_to_fp32(loss, grad, loss, 1.05 * grad)["grad"]["rel_l2"] == pytest.approx(0.05, rel=1e-5)
    assert G.compare_to_fp32(loss, grad, loss, 1.05 * grad)["pass"]
    assert not G.compare_to_fp32(loss, grad, loss, 1.15 * grad)["pass"]
    # a gradient pointing elsewhere: cosine -1 fails even where rel_l2 alone would not decide it
    flipped = G.compare_to_fp32(loss, grad, loss, -grad)
    assert flipped["grad"]["cosine"] == pytest.approx(-1.0) and flipped["grad"]["rel_l2"] == pytest.approx(2.0)
    assert not flipped["pass"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_says_so_and_runs_the_smoke_path(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # `bench` is a folder of the repository, not of the package
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path), "--params",
                        str(ROOT / "params.yaml")], capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    first = r.stdout.splitlines()[0]
    assert first.startswith("gpu-check: no CUDA device") and "--device cpu --smoke" in first
    res = json.loads((tmp_path / "gpu-check-smoke.json").read_text())
    assert res["smoke"] and set(res["bench"]["models"]) == {"small_cnn"}
    bf = res["bf16"]["small_cnn"]
    assert set(bf["loss"]) == {"ce", "energy", "grad", "total"} and bf["pass"]
    # bf16 really ran (fp32 would give exactly 0) and stayed within the tolerance the verdict uses
    assert 0 < bf["grad"]["rel_l2"] <= G.BF16_TOL["grad_rel_l2"] and bf["grad"]["cosine"] >= G.BF16_TOL["grad_cos"]
    sl = res["slice"]
    assert sl["candidates"] == 384 // 64 * 4 and sl["ours_s_per_step"] > 0 and sl["official_s_per_step"] > 0
    assert sl["busy"]["fraction"] is None and sl["busy"]["reason"] == "no CUDA device"
    assert res["projection"]["complete"] and res["projection"]["total_s"] > 0
    md = (tmp_path / "gpu-check-smoke.md").read_text()
    for heading in ("Step benchmark", "bf16 autocast against fp32", "WRN-40-2 GReg+ epoch", "Projected wall time"):
        assert heading in md
    # every stage of report_cifar10 is projected: the kinds add up to the total, and the main grid is all there
    projection = md[md.index("| stage kind |"):]
    rows = [r.split("|")[1:3] for r in projection.splitlines() if r.startswith("| ") and r.split("|")[2].strip().isdigit()]
    counts = {k.strip(): int(n) for k, n in rows}
    total = counts.pop("**total**")
    assert total == sum(counts.values())
    s10 = yaml.safe_load((ROOT / "params.yaml").read_text())["suites"]["cifar10"]
    grid = len(s10["archs"]) * len(s10["methods"]) * len(s10["seeds"])
    assert sum(n for k, n in counts.items() if k.startswith("train (main")) == grid
    assert counts["evaluate"] >= grid
