"""The noise finding: which methods score synthetic noise as in-distribution, what their final models give noise
images, what the auxiliary batches fed to training looked like, and whether the auxiliary pool holds anything
noise-like. Every line of ``noise_finding.md`` is computed from the run's files; nothing is a written verdict.

Inputs: the results frame (FPR95 per OOD set), the evaluate stage's per-sample score arrays
(``<score>/<set>`` and ``<score>/id`` in ``results/<suite>/scores/<experiment>.npz``; the energy score is −E),
the training logs' margin diagnostics (``energy_aux_p5/p50/p95``, ``active_frac_aux``, ``energy_id_p50``; see
:func:`greg_ood.losses.margin_stats`) and, for the data fact, the prepared image arrays
(``data/prepared/<dataset>/<split>.images.npy``, uint8 N×H×W×C).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ..data.sources import NOISE_DATASETS
from ..run.io import write_bytes_atomic
from ..metrics import fpr_at_tpr
from .aggregate import score_mask
from .loading import experiment_of_csv, load_train_curves
from .names import arch_key, arch_name, method_key, method_name, set_name
from .writers import table_to_markdown

#: a run "scores noise as ID" when its FPR95 on a noise set exceeds this fraction
SCORED_AS_ID_FPR = 0.5
#: at most this many images per dataset enter the pixel statistics (evenly spaced, so the choice is fixed)
MAX_IMAGES = 10000
#: training-log columns of the margin diagnostics (:func:`greg_ood.losses.margin_stats`)
TRAIN_COLUMNS = ("energy_aux_p5", "energy_aux_p50", "energy_aux_p95", "active_frac_aux", "energy_id_p50")


@dataclass(frozen=True)
class NoiseInputs:
    """What the noise finding reads besides the results: the noise sets' names, and the prepared image files
    (``{label: path}``) whose pixel statistics are compared, the auxiliary pool under ``aux_label``."""
    noise_sets: tuple[str, ...]
    image_files: Mapping[str, Path] = field(default_factory=dict)
    aux_label: str = ""


def noise_inputs_from_names(ood_sets: Sequence[str]) -> NoiseInputs:
    """Without the suite's config: the OOD sets named like a noise dataset, and no image files."""
    return NoiseInputs(tuple(s for s in ood_sets if s in NOISE_DATASETS))


def noise_inputs(suite_cfg, paths) -> NoiseInputs:
    """From a suite's config (:class:`greg_ood.run.config.SuiteCfg`) and :class:`greg_ood.run.paths.Paths`: the OOD sets
    whose dataset is one of :data:`NOISE_DATASETS`, and the image files of the auxiliary pool and of those sets."""
    d = suite_cfg.data
    sets = [o for o in d.ood if o.dataset in NOISE_DATASETS]
    aux_label = f"auxiliary pool ({d.aux.dataset})"
    files = {aux_label: paths.prepared(d.aux.dataset) / f"{d.aux.split}.images.npy"}
    files.update({o.name: paths.prepared(o.dataset) / f"{o.split}.images.npy" for o in sets})
    return NoiseInputs(tuple(o.name for o in sets), files, aux_label)


def id_threshold_fraction(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> tuple[float, float]:
    """``(t, fraction)``: t = the (1 − tpr) quantile of the ID scores (numpy's linear interpolation), the threshold
    that keeps ``tpr`` of the ID test set (scores: higher = ID), and the fraction of ``ood_scores`` ≥ t, i.e. the
    OOD images accepted as ID there. Close to FPR95 (which picks its threshold on the ROC points)."""
    t = float(np.quantile(np.asarray(id_scores, dtype=float), 1.0 - tpr))
    return t, float(np.mean(np.asarray(ood_scores, dtype=float) >= t))


def pixel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the pixel standard deviation (0–255 scale, over pixels and channels, ddof = 0) and the
    high-frequency ratio r = mean over horizontal and vertical neighbour pairs of (x_p − x_q)² / (2 · var(x)),
    with var over the image's pixels per channel (both averaged over channels before the ratio).

    For independent pixels E[(x_p − x_q)²] = 2 var, so r ≈ 1 for white noise; smooth photographs have r ≪ 1;
    a checkerboard gives 2; a constant image gives NaN. ``images``: N×H×W×C (or N×H×W)."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    var = x.var(axis=(1, 2))                                    # N×C
    dh = np.mean(np.diff(x, axis=2) ** 2, axis=(1, 2))
    dv = np.mean(np.diff(x, axis=1) ** 2, axis=(1, 2))
    num, den = ((dh + dv) / 2).mean(axis=1), (2 * var).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.sqrt(var.mean(axis=1)), ratio


def _sample(path: Path, max_images: int) -> np.ndarray:
    a = np.load(path, mmap_mode="r")
    idx = np.unique(np.linspace(0, len(a) - 1, min(len(a), max_images)).round().astype(int))
    return np.asarray(a[idx])


def data_table(inp: NoiseInputs, notes: list[str], max_images: int = MAX_IMAGES) -> pd.DataFrame:
    """One row per image file: images measured, pixel std and high-frequency ratio (:func:`pixel_stats`) as
    median [5th, 95th percentile], and the share of images at least as high-frequency as the noise (r ≥ the lowest
    5th percentile of r over the noise sets). Files that are missing are left out with a note."""
    stats = {}
    for label, f in inp.image_files.items():
        if not Path(f).is_file():
            notes.append(f"Pixel statistics: no image array {f} for {label} (not an array dataset, or not prepared).")
            continue
        stats[label] = pixel_stats(_sample(Path(f), max_images))
    noise_r = [np.nanpercentile(stats[s][1], 5) for s in inp.noise_sets if s in stats]
    floor = min(noise_r) if noise_r else math.nan
    rows = []
    for label, (sd, r) in stats.items():
        like = int(np.sum(r >= floor)) if not math.isnan(floor) else 0
        rows.append({"Data": set_name(label), "Images measured": str(len(r)),
                     "Pixel std, median [p5, p95]": _med_range(sd, 1),
                     "HF ratio, median [p5, p95]": _med_range(r, 3),
                     "As high-frequency as the noise": "–" if math.isnan(floor) else
                     f"{like} of {len(r)} ({100 * like / len(r):.2f} %)",
                     "_label": label, "_r_median": float(np.nanmedian(r)), "_like": like, "_n": len(r)})
    t = pd.DataFrame(rows)
    t.attrs.update(floor=floor, aux_label=inp.aux_label)
    return t


def _med_range(v: np.ndarray, digits: int) -> str:
    p5, p50, p95 = np.nanpercentile(v, [5, 50, 95])
    return f"{p50:.{digits}f} [{p5:.{digits}f}, {p95:.{digits}f}]"


def run_table(df: pd.DataFrame, noise_sets: Sequence[str], scores_dir: Optional[Path],
              notes: list[str]) -> pd.DataFrame:
    """One row per main-group run × noise set: FPR95 (primary score, from the results), the share of noise images
    at or above the ID 95 %-TPR threshold of the primary score (:func:`id_threshold_fraction`, from the score
    arrays), and the energy E = −(energy score) on the ID test set (median, 95th percentile = the energy threshold
    that keeps 95 % of ID) and on the noise set (5th, 50th, 95th percentiles). Values the score arrays do not hold
    are NaN."""
    d = df[(df["group"] == "main") & score_mask(df, "primary") & df["ood_set"].isin(list(noise_sets))]
    rows = []
    for _, r in d.iterrows():
        row = {"experiment": r["experiment"], "method": r["method"], "arch": r["arch"], "seed": int(r["seed"]),
               "ood_set": r["ood_set"], "fpr95": float(r["fpr95"]), "scored_as_id": bool(r["fpr95"] > SCORED_AS_ID_FPR),
               "frac_above_id_threshold": math.nan, "energy_id_p50": math.nan, "energy_id_p95": math.nan,
               "energy_noise_p5": math.nan, "energy_noise_p50": math.nan, "energy_noise_p95": math.nan}
        z = _score_arrays(r, scores_dir, notes)
        if z is not None:
            p, s = r["primary_score"], r["ood_set"]
            row["frac_above_id_threshold"] = id_threshold_fraction(z[f"{p}/id"], z[f"{p}/{s}"], float(r["tpr"]))[1]
            if "energy/id" in z and f"energy/{s}" in z:
                e_id, e_n = -z["energy/id"].astype(float), -z[f"energy/{s}"].astype(float)
                row["energy_id_p50"], row["energy_id_p95"] = np.percentile(e_id, [50, 95])
                row["energy_noise_p5"], row["energy_noise_p50"], row["energy_noise_p95"] = \
                    np.percentile(e_n, [5, 50, 95])
        rows.append(row)
    return _ordered(pd.DataFrame(rows), ["ood_set"])


def _score_arrays(r: pd.Series, scores_dir: Optional[Path], notes: list[str]) -> Optional[dict[str, np.ndarray]]:
    """The score arrays of the run of results row ``r``, or None (with a note) when the file is missing, lacks
    the primary score, or is not the one the results came from: FPR95 recomputed from the arrays
    (:func:`greg_ood.metrics.fpr_at_tpr` with the run's convention) must equal the results' value."""
    f = Path(scores_dir) / f"{r['experiment']}.npz" if scores_dir is not None else None
    if f is None or not f.is_file():
        notes.append(f"No score arrays for {r['experiment']} ({f}): per-sample columns left empty.")
        return None
    p, s = r["primary_score"], r["ood_set"]
    with np.load(f) as npz:
        z = {k: npz[k] for k in npz.files}
    if f"{p}/id" not in z or f"{p}/{s}" not in z:
        notes.append(f"{f}: no '{p}/id' or '{p}/{s}' array: per-sample columns left empty.")
        return None
    fpr = fpr_at_tpr(z[f"{p}/id"], z[f"{p}/{s}"], float(r["tpr"]), r["positive"], r["fpr_rule"])
    if not math.isclose(fpr, float(r["fpr95"]), abs_tol=1e-6):
        notes.append(f"{f}: FPR95 on {s} from these arrays is {fpr:.6f}, the results say {float(r['fpr95']):.6f} "
                     f"(a file from another run?): per-sample columns left empty.")
        return None
    return z


def _ordered(t: pd.DataFrame, extra: Sequence[str]) -> pd.DataFrame:
    if t.empty:
        return t
    key = t.apply(lambda r: (arch_key(r["arch"]), method_key(r["method"]), r["seed"]), axis=1)
    return t.assign(_k=key).sort_values(["_k", *extra], kind="stable").drop(columns="_k").reset_index(drop=True)


def train_table(df: pd.DataFrame, train_csv_files: Sequence[Path], notes: list[str]) -> pd.DataFrame:
    """One row per main-group run with a training log: the mean over logged steps of :data:`TRAIN_COLUMNS` (the
    energies of the auxiliary rows each step trained on: the picks of GReg+'s, DOS's and POEM's samplers, random
    pool batches for the other methods), plus the auxiliary median energy at the last logged step. Empty (with a
    note) when the logs predate these columns."""
    runs = df[df["group"] == "main"].drop_duplicates("experiment")
    exps = set(runs["experiment"])
    files = [Path(f) for f in train_csv_files if Path(f).is_file() and experiment_of_csv(f) in exps]
    curves = load_train_curves(files, df)
    have = [c for c in TRAIN_COLUMNS if c in curves.columns and curves[c].notna().any()]
    if curves.empty or len(have) < len(TRAIN_COLUMNS):
        notes.append("The training logs lack the margin diagnostics (" + ", ".join(TRAIN_COLUMNS) + "): they were "
                     "written by an older training code; rerunning the train stages fills them.")
        return pd.DataFrame()
    rows = []
    for exp, g in curves.groupby("experiment", sort=False):
        g = g.dropna(subset=["energy_aux_p50"]).sort_values("step")
        if g.empty:
            continue
        rows.append({"experiment": exp, "method": g["method"].iloc[0], "arch": g["arch"].iloc[0],
                     "seed": int(g["seed"].iloc[0]), "logged_steps": len(g),
                     **{f"train_{c}": float(g[c].mean()) for c in TRAIN_COLUMNS},
                     "train_energy_aux_p50_last": float(g["energy_aux_p50"].iloc[-1])})
    return _ordered(pd.DataFrame(rows), [])


def summary_lines(runs: pd.DataFrame, train: pd.DataFrame, data: pd.DataFrame,
                  noise_sets: Sequence[str]) -> list[str]:
    """The computed summary: per method and noise set "scored as ID (FPR95 > 50 %) in k of n seeds" with the
    per-seed FPR95; the methods that do so in at least one seed; per method the auxiliary energies training saw
    and how the noise's energies compare with them; the share of the auxiliary pool as high-frequency as the
    noise."""
    lines = []
    groups = list(runs.groupby(["arch", "method"], sort=False))
    for (arch, m), g in groups:
        parts = []
        for s in noise_sets:
            gs = g[g["ood_set"] == s].sort_values("seed")
            if len(gs):
                per = ", ".join(f"{100 * v:.1f}" for v in gs["fpr95"])
                parts.append(f"{set_name(s)} in {int(gs['scored_as_id'].sum())} of {_n(len(gs), 'seed')} "
                             f"(FPR95 {per} %)")
        lines.append(f"{method_name(m)} ({arch_name(arch)}): noise scored as ID (FPR95 > "
                     f"{100 * SCORED_AS_ID_FPR:g} %): " + "; ".join(parts) + ".")
    hit = [f"{method_name(m)} ({arch_name(a)})" for (a, m), g in groups if g["scored_as_id"].any()]
    lines.append(f"Methods with a noise set scored as ID in at least one seed: {', '.join(hit) if hit else 'none'} "
                 f"(of {len(groups)}).")
    return lines + _training_lines(runs, train) + _data_lines(data)


def _n(k: int, what: str) -> str:
    return f"{k} {what}{'s' if k != 1 else ''}"


def _training_lines(runs: pd.DataFrame, train: pd.DataFrame) -> list[str]:
    """Per method: the auxiliary energies of the training batches (mean over logged steps and seeds), and in how
    many (run, noise set) pairs the noise's median energy under the final model lies below those batches' 5th
    percentile, i.e. more ID-like than nearly every outlier the run was trained on."""
    if not len(train):
        return []
    j = runs.merge(train[["experiment", "train_energy_aux_p5"]], on="experiment")
    lines = []
    for (a, m), g in train.groupby(["arch", "method"], sort=False):
        jm = j[(j["arch"] == a) & (j["method"] == m)].dropna(subset=["energy_noise_p50", "train_energy_aux_p5"])
        below = int((jm["energy_noise_p50"] < jm["train_energy_aux_p5"]).sum())
        lines.append(f"Training batches of {method_name(m)} ({arch_name(a)}), mean over logged steps and "
                     f"{_n(len(g), 'seed')}: auxiliary energy median {g['train_energy_aux_p50'].mean():.2f} "
                     f"(5th–95th percentile {g['train_energy_aux_p5'].mean():.2f} to "
                     f"{g['train_energy_aux_p95'].mean():.2f}), share of auxiliary rows above m_out "
                     f"{100 * g['train_active_frac_aux'].mean():.1f} %, ID energy median "
                     f"{g['train_energy_id_p50'].mean():.2f}; the noise's median energy (final model) is below the "
                     f"auxiliary 5th percentile in {below} of {_n(len(jm), 'run × noise set pair')}.")
    return lines


def _data_lines(data: pd.DataFrame) -> list[str]:
    aux = data[data["_label"] == data.attrs.get("aux_label")] if len(data) else data
    if not len(aux):
        return []
    r = aux.iloc[0]
    med = "; ".join(f"{row['Data']} {row['_r_median']:.3f}" for _, row in data.iterrows())
    return [f"{r['Data']}: {r['_like']} of {r['_n']} measured images ({100 * r['_like'] / r['_n']:.2f} %) are as "
            f"high-frequency as the noise (HF ratio ≥ {data.attrs['floor']:.3f}, the lowest 5th percentile over the "
            f"noise sets); median HF ratio: {med}."]


def _run_markdown(runs: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    t = runs.merge(train[["experiment", "train_energy_aux_p5", "train_energy_aux_p50"]], on="experiment",
                   how="left") if len(train) else runs.assign(train_energy_aux_p5=math.nan,
                                                              train_energy_aux_p50=math.nan)
    f = lambda v, d=2: "–" if v is None or math.isnan(v) else f"{v:.{d}f}"  # noqa: E731
    return pd.DataFrame({
        "Architecture": t["arch"].map(arch_name), "Method": t["method"].map(method_name), "Seed": t["seed"],
        "Noise set": t["ood_set"].map(set_name), "FPR95 (%)": (t["fpr95"] * 100).map(f),
        "Noise ≥ ID 95 % threshold (%)": (t["frac_above_id_threshold"] * 100).map(f),
        "E noise p5 / p50 / p95": [" / ".join(f(v) for v in r) for r in
                                   t[["energy_noise_p5", "energy_noise_p50", "energy_noise_p95"]].to_numpy()],
        "E ID p50 / p95": [" / ".join(f(v) for v in r) for r in t[["energy_id_p50", "energy_id_p95"]].to_numpy()],
        "Training aux E p5 / p50": [" / ".join(f(v) for v in r) for r in
                                    t[["train_energy_aux_p5", "train_energy_aux_p50"]].to_numpy()]})


def build_noise_finding(df: pd.DataFrame, *, suite: str, inputs: NoiseInputs, out: Path,
                        scores_dir: Optional[os.PathLike | str], train_csv_files: Sequence[os.PathLike | str],
                        notes: list[str]) -> dict[str, Path]:
    """Write ``noise_finding.md`` (summary, per-run table, training table, data table), ``noise_finding.csv``
    (one row per run × noise set, unrounded) and ``noise_finding_readme.md`` (the summary alone, quoted by the
    README). Nothing is written (a note says why) when the suite has no noise set or no main-group run on one."""
    sets = [s for s in inputs.noise_sets if s in set(df["ood_set"])]
    if not sets:
        notes.append(f"Noise finding skipped: no OOD set of suite {suite!r} is synthetic noise "
                     f"({', '.join(NOISE_DATASETS)}).")
        return {}
    own: list[str] = []
    runs = run_table(df, sets, Path(scores_dir) if scores_dir is not None else None, own)
    if runs.empty:
        notes.append("Noise finding skipped: no main-group run was evaluated on a noise set.")
        return {}
    train = train_table(df, [Path(f) for f in train_csv_files], own)
    data = data_table(inputs, own)
    summary = summary_lines(runs, train, data, sets)
    csv = runs.merge(train.drop(columns=["method", "arch", "seed"]), on="experiment", how="left") \
        if len(train) else runs
    readme = ("Generated by the report stage (`noise_finding_readme.md`); per run, training batches and pixel "
              "statistics: `noise_finding.md`.\n\n" + "\n".join(f"* {ln}" for ln in summary) + "\n")
    return {"noise_finding.md": write_bytes_atomic(out / "noise_finding.md",
                                                   _markdown(suite, sets, summary, runs, train, data, own)),
            "noise_finding.csv": write_bytes_atomic(out / "noise_finding.csv",
                                                    csv.to_csv(index=False, lineterminator="\n")),
            "noise_finding_readme.md": write_bytes_atomic(out / "noise_finding_readme.md", readme)}


def _markdown(suite: str, sets: Sequence[str], summary: Sequence[str], runs: pd.DataFrame, train: pd.DataFrame,
              data: pd.DataFrame, notes: Sequence[str]) -> str:
    """``noise_finding.md``: the summary, then the per-run, training-batch and pixel-statistics tables, then notes."""
    head = (f"# {suite}: synthetic noise scored as in-distribution\n\nComputed by the report stage from the "
            f"results, the per-sample score arrays, the training logs and the prepared data. Noise sets: "
            f"{', '.join(set_name(s) for s in sets)}. E = energy (−T·logsumexp(f/T)); low E = ID. A run scores a "
            f"noise set as ID when its FPR95 there exceeds {100 * SCORED_AS_ID_FPR:g} %.\n")
    body = [head, "## Summary\n", *[f"* {ln}" for ln in summary], ""]
    t = _run_markdown(runs, train)
    t.attrs["caption"] = ("Per run and noise set, final model. FPR95: the method's own score (results). Noise ≥ ID "
                          "95 % threshold: share of noise images whose score reaches the threshold that keeps 95 % "
                          "of the ID test set. E ID p95 is the energy threshold at 95 % ID recall: noise below it "
                          "passes as ID under the energy score. Training aux E: auxiliary energies of the training "
                          "batches (mean over logged steps).")
    body += ["## Per run\n", table_to_markdown(t)]
    if len(train):
        tt = train.drop(columns=["experiment"]).assign(arch=train["arch"].map(arch_name),
                                                       method=train["method"].map(method_name)).round(3)
        tt = tt.rename(columns={"method": "Method", "arch": "Architecture", "seed": "Seed",
                                "logged_steps": "Logged steps", "train_energy_aux_p5": "Aux E p5",
                                "train_energy_aux_p50": "Aux E p50", "train_energy_aux_p95": "Aux E p95",
                                "train_active_frac_aux": "Aux share above m_out", "train_energy_id_p50": "ID E p50",
                                "train_energy_aux_p50_last": "Aux E p50, last step"})
        tt.attrs["caption"] = ("What training fed the model: per run, the mean over logged steps of the auxiliary "
                               "rows' energy percentiles, the share of auxiliary rows above m_out, and the ID median "
                               "energy (each step's batch, under the model at that step).")
        body += ["## Training batches\n", table_to_markdown(tt.astype(str))]
    if len(data):
        dt = data[[c for c in data.columns if not c.startswith("_")]]
        dt.attrs["caption"] = ("Pixel statistics of the prepared images (at most "
                               f"{MAX_IMAGES} evenly spaced per file): per-image pixel std (0–255) and "
                               "high-frequency ratio r (mean squared neighbour difference / 2·variance; ≈ 1 for "
                               "white noise, ≪ 1 for photographs).")
        body += ["## Data: noise-like images in the auxiliary pool\n", table_to_markdown(dt)]
    if notes:
        body += ["## Notes\n", *[f"* {n}" for n in dict.fromkeys(notes)], ""]
    return "\n".join(body).rstrip() + "\n"
