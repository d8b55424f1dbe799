"""The step-cost benchmark (`make bench`, bench/): its timing arithmetic on a fake clock, its ratios and targets on
known step times, the official-style rebuild against our penalty and sampler (the comparison is like for like), and
a smoke run whose counts and derived numbers follow from its configuration."""
from __future__ import annotations

import json

import pytest
import torch

from bench import measure
from bench import official as O
from bench import step_cost as bench
from bench import steps as BS
from greg_ood import losses as L
from greg_ood import models as MD
from greg_ood import sampling as S
from greg_ood.scores import energy as energy_of

CPU = torch.device("cpu")


def test_timeit_runs_warmup_untimed_then_times_each_repeat():
    clock = {"t": 100.0}
    calls = []

    def work():  # the n-th call takes n * 0.25 s on the fake clock
        calls.append(len(calls) + 1)
        clock["t"] += 0.25 * len(calls)

    times = measure.timeit(work, CPU, warmup=2, repeats=3, clock=lambda: clock["t"])
    assert calls == [1, 2, 3, 4, 5]
    assert times == [0.75, 1.0, 1.25]  # calls 3, 4, 5; the two warm-up calls are not timed
    assert measure.median(times) == 1.0 and measure.median([1.0, 4.0]) == 2.5


def _res(energy, greg, greg_plus, off, off_plus, data, sampler_s, speedup, inertia):
    return {"seconds_per_step": {"energy": energy, "greg": greg, "greg_plus": greg_plus, "official_greg": off,
                                 "official_greg_plus": off_plus},
            "data_seconds": {"ours": data[0], "official": data[1], "ours_plus": data[2], "official_plus": data[3]},
            "sampler": {"ours_select_s": sampler_s, "speedup_select": speedup, "speedup_kmeans": 2 * speedup,
                        "inertia_ratio": inertia}}


def test_ratios_and_targets_from_known_step_times():
    r, t = BS._ratios(_res(0.1, 0.3, 0.5, 0.5, 1.0, (0.05, 0.1, 0.1, 0.4), 0.02, 8.0, 1.01))
    assert r["greg_over_energy"] == pytest.approx(3.0)
    assert r["greg_over_official"] == pytest.approx(0.6)
    assert r["greg_plus_over_official"] == pytest.approx(0.5)
    assert r["greg_over_official_compute"] == pytest.approx((0.3 - 0.05) / (0.5 - 0.1))
    assert r["greg_plus_over_official_compute"] == pytest.approx((0.5 - 0.1) / (1.0 - 0.4))
    assert r["greg_plus_over_greg"] == pytest.approx(5 / 3)
    assert r["sampling_frac_of_greg_plus"] == pytest.approx(0.04)
    assert (r["sampler_speedup_select"], r["sampler_speedup_kmeans"], r["inertia_ratio"]) == (8.0, 16.0, 1.01)
    assert all(v["pass"] for v in t.values()), t
    assert t["greg_step_le_1.15x3.3x_energy"]["limit"] == pytest.approx(1.15 * 3.3)
    # over each limit: every target fails; a failed (out of memory) step gives no ratio and no verdict
    r, t = BS._ratios(_res(0.1, 0.4, 0.9, 0.5, 1.0, (0, 0, 0, 0), 0.2, 4.0, 1.03))
    assert r["greg_over_energy"] == pytest.approx(4.0) and not any(v["pass"] for v in t.values()), t
    r, t = BS._ratios(_res(0.1, 0.3, None, 0.5, 1.0, (0, 0, 0, 0), 0.02, 8.0, 1.0))
    assert r["greg_plus_over_official"] is None and t["greg_plus_step_le_0.75x_official"]["pass"] is None
    assert r["sampling_frac_of_greg_plus"] is None and t["greg_step_le_0.75x_official"]["pass"] is True


def test_official_penalty_equals_our_single_forward_penalty():
    """The benchmark's official-style term (second forward inside a Jacobian) is the same number as ours."""
    torch.manual_seed(0)
    model = MD.build("small_cnn", 10, in_channels=1).train()
    x = torch.randn(12, 1, 28, 28)
    n_in = 5
    with torch.no_grad():
        e = energy_of(model(x))
    m_in = float(e.median())  # about half the ID rows and half the aux rows violate their margin: mixed indicators
    m_out = m_in + 1e-3
    official = O.official_penalty(model, x, n_in, m_in, m_out)
    xr = x.clone().requires_grad_(True)
    is_id = torch.arange(12) < n_in
    ours = L.gradient_penalty(xr, energy_of(model(xr)), is_id, m_in, m_out, "official")
    assert ours.item() > 0
    assert official.item() == pytest.approx(ours.item(), rel=1e-5)


def _four_clusters():
    """20 candidates in 4 well-separated directions (5 each), energies 0..19 shuffled."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 8) * 10
    z = centres.repeat_interleave(5, 0) + 0.01 * torch.randn(20, 8, generator=g)
    e = torch.randperm(20, generator=g).float()
    return e, z


def test_official_select_takes_each_clusters_lowest_and_highest_energy_like_ours():
    e, z = _four_clusters()
    per_cluster = e.reshape(4, 5)
    expected = {int(c * 5 + per_cluster[c].argmin()) for c in range(4)} | \
               {int(c * 5 + per_cluster[c].argmax()) for c in range(4)}
    picked = O.official_select_from(e, z, n_select=4, n_clusters=4)
    assert len(picked) == 8 and set(picked.tolist()) == expected
    ours = S.energy_cluster_select(e, z, 4, 4, two_way=True, generator=torch.Generator().manual_seed(1))
    assert set(ours.tolist()) == expected


def test_smoke_run_counts_and_derived_numbers(tmp_path):
    # one intra-op thread: the smoke run stays fast even when the machine is busy (restored afterwards)
    res = bench.run(smoke=True, out=tmp_path, threads=1, warmup=1, repeats=2, note="n", log=lambda *a, **k: None)
    assert list(res["models"]) == ["small_cnn"] and res["note"] == "n"
    r = res["models"]["small_cnn"]
    assert r["config"] == {"B": 8, "C": 48, "k": 8, "warmup": 1, "repeats": 2, "interleaved": True}
    assert r["failed"] == {} and r["input"] == [1, 28, 28]
    assert r["params"] == MD.count_parameters(MD.build("small_cnn", 10, in_channels=1))
    for key in ("energy", "greg", "greg_plus", "official_greg", "official_greg_plus"):
        assert len(r["step_times"][key]) == 2  # the timed rounds; the warm-up round is not recorded
        assert r["seconds_per_step"][key] == pytest.approx(sum(r["step_times"][key]) / 2)
    s = r["seconds_per_step"]
    assert r["ratios"]["greg_over_energy"] == pytest.approx(s["greg"] / s["energy"])
    assert r["ratios"]["greg_plus_over_greg"] == pytest.approx(s["greg_plus"] / s["greg"])
    assert (r["sampler"]["n_candidates"], r["sampler"]["k"], r["sampler"]["repeats"]) == (48, 8, 1)
    assert 0.5 < r["sampler"]["inertia_ratio"] < 2.0  # ours and scikit-learn's k-means on the same features
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["cpu-smoke.json", "cpu-smoke.md"]
    written = json.loads((tmp_path / "cpu-smoke.json").read_text())
    assert written["models"]["small_cnn"]["seconds_per_step"] == s and written["config"]["smoke"]
    assert "Seconds per training step" in (tmp_path / "cpu-smoke.md").read_text()
