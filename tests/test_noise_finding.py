"""Known-answer tests for the noise finding (``greg_ood.report.noise``): the threshold fraction, the pixel
statistics, and the whole section on synthetic runs (one method that scores uniform noise as ID in one of two seeds,
one that never does), score arrays, training logs and image files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import test_report as TR
from greg_ood.report.loading import load_results
from greg_ood.report.noise import (NoiseInputs, build_noise_finding, id_threshold_fraction, noise_inputs,
                                   pixel_stats)
from greg_ood.report.suite import build_suite_report

SETS = ["fmnist_near", "uniform_noise"]
# (method, seed) -> k of the 50 uniform-noise images that get energy score 8 (the others −5; the ID scores are
# 0, 0.1, …, 10, so FPR95 = k / 50), the training batches' auxiliary median energy
RUNS = {("greg_plus", 0): (45, -5.0), ("greg_plus", 1): (5, -5.0), ("energy", 0): (0, -3.0), ("energy", 1): (10, -3.0)}


def _noise_scores(k: int) -> np.ndarray:
    return np.r_[np.full(k, 8.0), np.full(50 - k, -5.0)]


def test_id_threshold_fraction_known_answer():
    t, frac = id_threshold_fraction(np.arange(100.0), np.arange(10.0))
    assert t == pytest.approx(4.95) and frac == 0.5  # 5 % quantile of 0..99; noise 5..9 reach it
    assert id_threshold_fraction(np.arange(100.0), np.full(4, t))[1] == 1.0  # at the threshold = accepted


def test_pixel_stats_known_answers():
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    ramp = np.tile(np.arange(8) * 10, (8, 1)).astype(np.uint8)  # dh = 100, dv = 0, var = 100 · 5.25
    const = np.full((8, 8), 7, np.uint8)
    sd, r = pixel_stats(np.stack([checker, ramp, const]))
    assert sd[0] == pytest.approx(127.5) and r[0] == pytest.approx(2.0)
    assert sd[1] == pytest.approx(math.sqrt(525.0)) and r[1] == pytest.approx(50.0 / 1050.0)
    assert sd[2] == 0.0 and math.isnan(r[2])
    noise = np.random.default_rng(0).integers(0, 256, size=(4, 64, 64, 1))
    assert pixel_stats(noise)[1] == pytest.approx(np.ones(4), abs=0.05)  # white noise: ≈ 1
    rgb = np.repeat(checker[None, ..., None], 3, axis=3)
    assert pixel_stats(rgb)[1][0] == pytest.approx(2.0)  # channels averaged


def _inputs(tmp: Path):
    """Results, score arrays, training logs and image files of the synthetic runs."""
    docs, logs = [], []
    scores, metrics = tmp / "scores", tmp / "train"
    scores.mkdir()
    metrics.mkdir()
    for (m, s), (k, aux_e) in RUNS.items():
        doc = TR.metrics_doc(method=m, seed=s, sets=SETS, per_set_fpr={"fmnist_near": 0.5, "uniform_noise": k / 50})
        docs.append(doc)
        np.savez(scores / f"{doc['experiment']}.npz",
                 **{"energy/id": np.linspace(0.0, 10.0, 101), "energy/uniform_noise": _noise_scores(k),
                    "energy/fmnist_near": np.zeros(50)})
        log = metrics / f"{doc['experiment']}.train.csv"
        pd.DataFrame({"step": [10, 20], "energy_aux_p5": [aux_e - 2, aux_e - 2], "energy_aux_p50": [aux_e, aux_e + 1],
                      "energy_aux_p95": [aux_e + 2, aux_e + 2], "active_frac_aux": [0.25, 0.75],
                      "energy_id_p50": [-9.0, -9.0]}).to_csv(log, index=False)
        logs.append(log)
    rng = np.random.default_rng(1)
    aux = np.tile(np.arange(28, dtype=np.uint8) * 9, (20, 28, 1))[..., None]  # smooth ramps: r = 0.0040
    aux[0] = rng.integers(0, 256, size=(28, 28, 1))                          # one noise-like auxiliary image
    files = {"aux pool": tmp / "aux.npy", "uniform_noise": tmp / "noise.npy"}
    np.save(files["aux pool"], aux)
    np.save(files["uniform_noise"], rng.integers(0, 256, size=(30, 28, 28, 1)).astype(np.uint8))
    return docs, logs, scores, NoiseInputs(("uniform_noise",), files, "aux pool")


def test_noise_finding_known_answers(tmp_path):
    docs, logs, scores, inp = _inputs(tmp_path)
    df = load_results(TR.write(tmp_path, docs))
    notes: list[str] = []
    got = build_noise_finding(df, suite="mini", inputs=inp, out=tmp_path / "out", scores_dir=scores,
                              train_csv_files=logs, notes=notes)
    assert set(got) == {"noise_finding.md", "noise_finding.csv", "noise_finding_readme.md"} and notes == []
    csv = pd.read_csv(got["noise_finding.csv"]).set_index(["method", "seed"])
    assert list(csv["scored_as_id"]) == [False, False, True, False]  # energy s0, s1, greg_plus s0, s1
    assert csv.loc[("greg_plus", 0), "frac_above_id_threshold"] == 0.9  # score 8 ≥ 0.5 (5 % quantile of ID)
    assert csv.loc[("greg_plus", 1), "frac_above_id_threshold"] == 0.1
    assert csv.loc[("greg_plus", 0), "energy_noise_p50"] == -8.0 and csv.loc[("energy", 1), "energy_noise_p50"] == 5.0
    assert csv.loc[("energy", 0), "energy_id_p95"] == pytest.approx(-0.5)  # −(5 % quantile of the ID scores)
    assert csv.loc[("greg_plus", 0), "train_energy_aux_p50"] == -4.5  # mean of -5 and -4 over the logged steps
    assert csv.loc[("greg_plus", 0), "train_energy_aux_p50_last"] == -4.0
    assert csv.loc[("energy", 0), "train_active_frac_aux"] == 0.5
    readme = got["noise_finding_readme.md"].read_text()
    assert "* GReg+ (Small CNN): noise scored as ID (FPR95 > 50 %): Uniform noise in 1 of 2 seeds (FPR95 90.0, " \
           "10.0 %)." in readme
    assert "* Energy (Small CNN): noise scored as ID (FPR95 > 50 %): Uniform noise in 0 of 2 seeds" in readme
    assert "Methods with a noise set scored as ID in at least one seed: GReg+ (Small CNN) (of 2)." in readme
    assert "GReg+ (Small CNN), mean over logged steps and 2 seeds: auxiliary energy median -4.50 (5th–95th " \
           "percentile -7.00 to -3.00)" in readme
    # noise median energy −8 (seed 0) is below the training batches' auxiliary 5th percentile −7; seed 1: +5 is not
    assert "is below the auxiliary 5th percentile in 1 of 2 run × noise set pairs." in readme
    assert "is below the auxiliary 5th percentile in 0 of 2 run × noise set pairs." in readme  # Energy
    assert "Aux pool: 1 of 20 measured images (5.00 %) are as high-frequency as the noise" in readme
    md = got["noise_finding.md"].read_text()
    assert readme.split("\n\n", 1)[1].strip() in md  # the README quote is the report's own summary
    assert "| Small CNN | GReg+ | 0 | Uniform noise | 90.00 | 90.00 | -8.00 / -8.00 / 5.00 | -5.00 / -0.50 |" in md


def test_score_arrays_from_another_run_are_not_used(tmp_path):
    docs, logs, scores, inp = _inputs(tmp_path)
    stale = scores / f"{docs[0]['experiment']}.npz"  # greg_plus s0 (k = 45), overwritten by arrays with k = 44
    np.savez(stale, **{"energy/id": np.linspace(0.0, 10.0, 101), "energy/uniform_noise": _noise_scores(44)})
    notes: list[str] = []
    got = build_noise_finding(load_results(TR.write(tmp_path, docs)), suite="mini", inputs=inp, out=tmp_path / "o",
                              scores_dir=scores, train_csv_files=logs, notes=notes)
    csv = pd.read_csv(got["noise_finding.csv"]).set_index(["method", "seed"])
    assert math.isnan(csv.loc[("greg_plus", 0), "frac_above_id_threshold"])
    assert csv.loc[("greg_plus", 1), "frac_above_id_threshold"] == 0.1
    assert "from these arrays is 0.880000, the results say 0.900000" in got["noise_finding.md"].read_text()


def test_noise_finding_without_training_diagnostics_or_noise_sets(tmp_path):
    docs, logs, scores, inp = _inputs(tmp_path)
    for f in logs:  # logs written by an older training code: no margin diagnostics
        pd.read_csv(f)[["step"]].assign(ce=1.0).to_csv(f, index=False)
    df = load_results(TR.write(tmp_path, docs))
    notes: list[str] = []
    got = build_noise_finding(df, suite="mini", inputs=inp, out=tmp_path / "out", scores_dir=None,
                              train_csv_files=logs, notes=notes)
    md = got["noise_finding.md"].read_text()
    assert "lack the margin diagnostics" in md and "## Training batches" not in md
    assert "No score arrays for mini-energy-small_cnn-s0" in md
    assert "in 1 of 2 seeds" in got["noise_finding_readme.md"].read_text()  # FPR95 comes from the results
    none = build_noise_finding(df, suite="mini", inputs=NoiseInputs(()), out=tmp_path / "o2", scores_dir=None,
                               train_csv_files=(), notes=notes)
    assert none == {} and "no OOD set of suite 'mini' is synthetic noise" in notes[-1]


def test_noise_inputs_follow_the_dataset_not_the_name():
    from greg_ood.run.config import load
    from greg_ood.run.paths import Paths
    s = load(TR.REPO / "params.yaml").suite("mini")
    s = s.model_copy(update={"data": s.data.model_copy(update={"ood": [
        o.model_copy(update={"name": "static"}) if o.dataset == "uniform_noise" else o for o in s.data.ood]})})
    inp = noise_inputs(s, Paths("r"))
    assert inp.noise_sets == ("gaussian_noise", "static")
    assert inp.image_files["static"] == Path("r/data/prepared/uniform_noise/test.images.npy")
    assert inp.image_files[inp.aux_label] == Path("r/data/prepared/skimage_crops/train.images.npy")


def test_suite_report_writes_the_noise_finding(tmp_path):
    docs, logs, scores, _ = _inputs(tmp_path)
    out = tmp_path / "rep"
    got = build_suite_report(suite="mini", metrics_files=TR.write(tmp_path, docs), paper_csv=None, out_dir=out,
                             scores_dir=scores, train_csv_files=logs)
    assert "noise_finding_readme.md" in got  # sets named like a noise dataset, without the config
    assert "## Data" not in (out / "noise_finding.md").read_text()  # no image files without the config
    assert "[noise_finding](noise_finding.md)" in (out / "summary.md").read_text()
