"""The figures of a suite report: which runs and side files go into which figure (the drawing itself is in the
``fig_*`` modules). Each function returns ``{name: path}`` of what it wrote and appends to ``notes`` what it could
not draw and why."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from .aggregate import ablation_rows, headline_set, score_mask
from .fig_certify import CertifyRun, plot_certify_runs
from .fig_detection import plot_roc, plot_score_histograms
from .fig_training import plot_gradnorm, plot_training_curves
from .loading import load_certify, load_certify_meta, load_train_curves
from .names import (MEAN, arch_key, arch_name, has_grad_term, method_color, method_key, method_name, score_name,
                    set_name)


def method_styles(methods: Iterable[str]) -> dict[str, dict]:
    """Line style per method, the same in every figure: ``{"color", "ls"}`` with the registry's colour; dashed for
    the methods with the gradient term, so that a method drawn on top of its base (GReg over Energy) stays
    visible."""
    return {m: {"color": method_color(m), "ls": "--" if has_grad_term(m) else "-"}
            for m in sorted(dict.fromkeys(methods))}


def _main_runs(df: pd.DataFrame, primary: str) -> pd.DataFrame:
    """One row per main-group experiment (the mean row of the primary score), in report order."""
    m = df[(df["group"] == "main") & df["is_mean"] & score_mask(df, primary)]
    order = sorted(range(len(m)), key=lambda i: (arch_key(m["arch"].iloc[i]), method_key(m["method"].iloc[i]),
                                                 int(m["seed"].iloc[i])))
    return m.iloc[order]


def roc_figures(df: pd.DataFrame, primary: str, conv: str, plots_dir: Path, out: Path, suite: str,
                notes: list[str]) -> dict[str, Path]:
    """``roc_<arch>.png``: the headline set (every set when the suite has none), every seed of every main method,
    mean ± band per method."""
    runs = _main_runs(df, primary)
    styles = {method_name(m): st for m, st in method_styles(runs["method"]).items()}
    head = headline_set(df)
    written = {}
    for arch, g in runs.groupby("arch", sort=False):
        files, labs = [], []
        for _, r in g.iterrows():
            f = next((c for c in (plots_dir / r["experiment"] / "roc.json",
                                  plots_dir / suite / r["experiment"] / "roc.json") if c.is_file()), None)
            if f is None:
                notes.append(f"No ROC points for {r['experiment']} under {plots_dir}.")
                continue
            files.append(f)
            labs.append(method_name(r["method"]))
        if files:
            key = f"figures/roc_{arch}.png"
            written[key] = plot_roc(files, out / key, labels=labs, styles=styles, convention=conv,
                                    sets=[head] if head else None,
                                    title=f"{suite} {arch_name(arch)}: ROC, {score_name(primary)} score, all seeds")
    return written


def score_figures(df: pd.DataFrame, primary: str, scores_dir: Path, out: Path, suite: str,
                  notes: list[str]) -> dict[str, Path]:
    """``scores_<experiment>.png`` for the lowest seed of each main (arch, method)."""
    reps = _main_runs(df, primary).groupby(["arch", "method"], sort=False).head(1)
    written = {}
    for _, r in reps.iterrows():
        f = next((c for c in (scores_dir / f"{r['experiment']}.npz", scores_dir / suite / f"{r['experiment']}.npz")
                  if c.is_file()), None)
        if f is None:
            notes.append(f"No score arrays for {r['experiment']} under {scores_dir}.")
            continue
        key = f"figures/scores_{r['experiment']}.png"
        written[key] = plot_score_histograms(f, out / key, score=r["primary_score"])
    return written


def training_figures(df: pd.DataFrame, primary: str, train_files: Sequence[Path], out: Path,
                     suite: str) -> dict[str, Path]:
    """Per architecture: ``gradnorm_<arch>.png`` (Figure 3 measured, main methods), ``training_curves_<arch>.png``
    and, with a λ_∇S ablation, ``gradnorm_lambda_<arch>.png`` (the ablated method at each λ_∇S)."""
    curves = load_train_curves(train_files, df)
    if curves.empty:
        return {}
    styles = {method_name(m): st for m, st in method_styles(curves["method"]).items()}
    main = curves[curves["group"] == "main"].assign(label=lambda t: t["method"].map(method_name))
    main = main.iloc[sorted(range(len(main)), key=lambda i: method_key(main["method"].iloc[i]))]
    written = {}
    for arch, g in main.groupby("arch", sort=False):
        name = f"{suite} {arch_name(arch)}"
        if any(c in g.columns and g[c].notna().any() for c in ("monitor_gradnorm_id", "monitor_gradnorm_aux")):
            key = f"figures/gradnorm_{arch}.png"
            written[key] = plot_gradnorm(g, out / key, styles=styles,
                                         title=f"{name}: input-gradient norm of the energy along training "
                                               f"(the paper's Figure 3, measured)")
        key = f"figures/training_curves_{arch}.png"
        written[key] = plot_training_curves(g, out / key, styles=styles, title=f"{name}: training curves")
    written.update(_lambda_gradnorm(df, primary, curves, out, suite))
    return written


def _lambda_gradnorm(df: pd.DataFrame, primary: str, curves: pd.DataFrame, out: Path, suite: str) -> dict:
    if not (df["group"] == "ablation").any() or "monitor_gradnorm_id" not in curves.columns:
        return {}
    ab = ablation_rows(df, suite, primary)
    ab = ab[ab["is_mean"]].drop_duplicates("experiment")
    lam_of = dict(zip(ab["experiment"], ab["lambda_grad"]))
    label_of = {e: f"λ = {lam:g}" + (f" ({method_name(b)})" if isinstance(b, str) else " (main)" if grp == "main"
                                      else "")
                for e, lam, b, grp in zip(ab["experiment"], ab["lambda_grad"], ab["lambda0_from"], ab["group"])}
    c = curves[curves["experiment"].isin(lam_of)].copy()
    c["lam"] = c["experiment"].map(lam_of)
    c = c.sort_values(["lam", "seed", "step"], kind="stable").assign(label=lambda t: t["experiment"].map(label_of))
    from matplotlib import colormaps
    labels = list(dict.fromkeys(c["label"]))
    cmap = colormaps["viridis"]
    styles = {lab: {"color": cmap(i / max(len(labels) - 1, 1) * 0.9), "ls": "-"} for i, lab in enumerate(labels)}
    written = {}
    for (arch, method), g in ab.groupby(["arch", "method"]):
        cg = c[(c["arch"] == arch) & c["experiment"].isin(g["experiment"])]
        if cg.empty:
            continue
        key = f"figures/gradnorm_lambda_{arch}.png"
        written[key] = plot_gradnorm(cg, out / key, styles=styles,
                                     title=f"{suite} {arch_name(arch)}: {method_name(method)} at each λ_∇S, "
                                           f"input-gradient norm along training")
    return written


def certify_figures(df: pd.DataFrame, certify_files: Sequence[Path], out: Path, suite: str,
                    notes: list[str]) -> dict[str, Path]:
    """``certify_<arch>-s<seed>.png``: every certified model of that architecture and seed on the same axes (ID
    and the headline set drawn as lines, medians of every set as bars), with γ and the cap from certify.json."""
    info = df.drop_duplicates("experiment").set_index("experiment")
    meta: dict[str, dict] = {}
    runs: dict[tuple, list[CertifyRun]] = {}
    styles = method_styles(info["method"])
    for f in sorted(certify_files, key=lambda p: method_key(info["method"].get(Path(p).stem, "~"))):
        f = Path(f)
        if f.stem not in info.index:
            notes.append(f"Certify file {f} skipped: no results for experiment {f.stem!r}.")
            continue
        try:
            g, r = load_certify(f)
        except (ValueError, OSError) as e:
            notes.append(f"Certify file skipped: {e}")
            continue
        meta.update(load_certify_meta(f.parent / "certify.json"))
        m = meta.get(f.stem, {})
        row = info.loc[f.stem]
        runs.setdefault((row["arch"], int(row["seed"])), []).append(
            CertifyRun(method_name(row["method"]), g, r, m.get("gamma"), m.get("eps"), styles[row["method"]]["color"]))
    head = headline_set(df)
    written = {}
    for (arch, seed), rs in sorted(runs.items(), key=lambda kv: (arch_key(kv[0][0]), kv[0][1])):
        key = f"figures/certify_{arch}-s{seed}.png"
        written[key] = plot_certify_runs(rs, out / key, sets=["id"] + ([head] if head else []),
                                         title=f"{suite} {arch_name(arch)}, seed {seed}: ‖∇ₓE‖ and radii "
                                               f"(lines: ID test and {set_name(head or MEAN)})")
    return written
