"""The result tables: the paper-style main table, the λ_∇S ablation, the gradient-term ablation and the paired
per-seed differences. Each returns a DataFrame of strings whose ``attrs["caption"]`` states the score, the FPR95
convention read from the data, and the seeds; :mod:`greg_ood.report.writers` turns it into Markdown, LaTeX and CSV.
"""
from __future__ import annotations

import builtins
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .aggregate import (ablation_rows, caption, convention_text, headline_set, kinds_text, method_frame, metric_cells,
                        natural_split, one_convention, ood_sets, select_rows, set_columns, signed, with_natural_mean)
from .names import (GRAD_PAIRS, LOWER_IS_BETTER, MEAN, METRIC_NAMES, METRICS, NATURAL_MEAN, arch_key, arch_name,
                    method_key, method_name, score_name, set_name)


def main_table(df: pd.DataFrame, *, suite: str, score: str = "energy", metrics: Sequence[str] = METRICS,
               group: str = "main", headline: Optional[bool] = None, per_set: bool = False,
               include_accuracy: bool = True, natural: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Paper-style main table.

    Rows: MultiIndex (Architecture, Method), one row group per architecture; a pretrained baseline row first when
    its results are present, then the methods in the paper's order (others after). Columns: MultiIndex (set,
    metric): ``("", "n")`` the number of seeds, the headline set's metrics (when ``headline``, default: the results
    name a headline set), every OOD set's (``per_set``), ``Mean``, then ``("", "ID acc. ↑")``. Cells are strings,
    "mean ± std" in percent; the best seed mean of each column within an architecture is listed in
    ``attrs["bold"]`` as (row, column) positions. The caption states the score, higher = ID, the FPR95 convention
    read from the data, and the seeds. ``natural`` names the natural-image OOD sets: when the suite also has other
    (synthetic-noise) sets, a ``Mean, natural-image sets`` column group comes before ``Mean, all sets``.
    """
    d = select_rows(df, suite, score, [group])
    conv = one_convention(d, f"main_table({suite}, {score})")
    sets = ood_sets(d)
    nat = natural_split(d, natural)
    d = with_natural_mean(d, nat)
    head = headline_set(d)
    use_headline = head is not None and (headline is None or headline)
    if use_headline:
        sets = [head] + [s for s in sets if s != head]
    shown = (sets if per_set else ([head] if use_headline else [])) + ([NATURAL_MEAN] if nat else []) + [MEAN]
    cols = [("", "n")] + set_columns(shown, head if use_headline else None, metrics, split=bool(nat))
    if include_accuracy:
        cols.append(("", METRIC_NAMES["id_accuracy"]))
    lower = [False] + [m in LOWER_IS_BETTER for _ in shown for m in metrics] + [False] * include_accuracy
    rows, means, index, nseeds = [], [], [], []
    for (arch, method), g in sorted(d.groupby(["arch", "method"]), key=lambda kv: (arch_key(kv[0][0]),
                                                                                   method_key(kv[0][1]))):
        lams = g["lambda_grad"].unique()
        if len(lams) > 1:
            raise ValueError(f"main_table: {arch}/{method} mixes lambda_grad values {sorted(lams)}; "
                             f"use ablation_table")
        row, mean = metric_cells(g, shown, metrics, include_accuracy)
        nseeds.append(g["seed"].nunique())
        rows.append(row)
        means.append(mean)
        index.append((arch_name(arch), method_name(method)))
    t = method_frame(rows, index, cols, means, lower)
    extra = "ID acc. = top-1 accuracy on the ID test set." if include_accuracy else ""
    if use_headline:
        extra += f" Headline column: {set_name(head)} (near-OOD), placed first."
    extra += " Bold: the best seed mean of each column within an architecture."
    means = kinds_text(nat, [s for s in sets if s not in nat]) if nat else ""
    t.attrs["caption"] = caption(suite, score, conv, len(sets), nseeds, extra.strip(), means)
    return t


def ablation_table(df: pd.DataFrame, *, suite: str, score: str = "energy") -> pd.DataFrame:
    """λ_∇S ablation: rows (Architecture, Method, λ_∇S) from group "ablation", the main run of the same (arch, method)
    marked "(main)", and λ_∇S = 0 from the method without the gradient term on the same seeds (e.g. "0 (Energy)")
    when no ablation run has λ_∇S = 0; columns headline-set and mean FPR95/AUROC and ID accuracy, mean ± std."""
    d = ablation_rows(df, suite, score)
    conv = one_convention(d, f"ablation_table({suite})")
    head = headline_set(d)
    shown = ([head] if head else []) + [MEAN]
    cols = [("", "n")] + set_columns(shown, head, ("fpr95", "auroc")) + [("", METRIC_NAMES["id_accuracy"])]
    rows, index, nseeds = [], [], []
    keyf = lambda kv: (arch_key(kv[0][0]), method_key(kv[0][1]), kv[0][2])  # noqa: E731
    for (arch, method, lam), g in sorted(d.groupby(["arch", "method", "lambda_grad"], dropna=False), key=keyf):
        row, _ = metric_cells(g, shown, ("fpr95", "auroc"))
        nseeds.append(g["seed"].nunique())
        base = g["lambda0_from"].dropna()
        if len(base):
            lab = f"{lam:g} ({method_name(base.iloc[0])})"
        else:
            lab = f"{lam:g}" + (" (main)" if (g["group"] == "main").any() else "")
        rows.append(row)
        index.append((arch_name(arch), method_name(method), lab))
    t = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Architecture", "Method", "λ_∇S"]),
                     columns=pd.MultiIndex.from_tuples(cols))
    t.attrs["caption"] = caption(suite, score, conv, int(d["n_ood_sets"].max()), nseeds,
                                 "Ablation of the gradient-regularisation weight λ_∇S; (main) = the main "
                                 "experiment's λ_∇S; a λ_∇S = 0 row named after a method is that method's main runs "
                                 "on the same seeds (the loss without the gradient term).")
    return t



def grad_ablation_table(df: pd.DataFrame, *, suite: str, score: str = "energy",
                        pairs: Sequence[tuple[str, str]] = GRAD_PAIRS) -> pd.DataFrame:
    """The paper's "gradient term added to other losses" table: for each pair (without, with the gradient term)
    and architecture, both rows and a Δ row (with − without, points), from group "grad_ablation" plus "main"."""
    d = select_rows(df, suite, score, ["main", "grad_ablation"])
    conv = one_convention(d, f"grad_ablation_table({suite})")
    head = headline_set(d)
    shown = ([head] if head else []) + [MEAN]
    metrics = ("fpr95", "auroc")
    cols = [("", "n")] + set_columns(shown, head, metrics) + [("", METRIC_NAMES["id_accuracy"])]
    rows, index, nseeds = [], [], []
    for arch in sorted(d["arch"].unique(), key=arch_key):
        da = d[d["arch"] == arch]
        for base, withg in pairs:
            gb, gw = da[da["method"] == base], da[da["method"] == withg]
            if gb.empty or gw.empty:
                continue
            means = []
            for m, g in ((base, gb), (withg, gw)):
                lams = sorted(g["lambda_grad"].dropna().unique())
                row, mean = metric_cells(g, shown, metrics)
                nseeds.append(g["seed"].nunique())
                means.append(mean)
                name = method_name(m)
                if m == withg and lams:
                    name += f" (λ_∇S = {', '.join(f'{x:g}' for x in lams)})"
                rows.append(row)
                index.append((arch_name(arch), name))
            rows.append([""] + [signed(w - b) for w, b in zip(means[1][1:], means[0][1:])])
            index.append((arch_name(arch), f"Δ {method_name(withg)} − {method_name(base)}"))
    if not rows:
        raise ValueError(f"grad_ablation_table: none of the pairs {list(pairs)} has both methods in suite {suite!r}")
    t = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Architecture", "Method"]),
                     columns=pd.MultiIndex.from_tuples(cols))
    t.attrs["caption"] = caption(suite, score, conv, int(d["n_ood_sets"].max()), nseeds,
                                  "Gradient regularisation added to other training losses; Δ rows = difference of "
                                  "the seed means in points (FPR95: negative is better).")
    return t


def paired_differences(df: pd.DataFrame, *, suite: str, baseline: str = "energy",
                       methods: Sequence[str] = ("greg", "greg_plus"), set: Optional[str] = None,  # noqa: A002
                       score: str = "energy") -> pd.DataFrame:
    """Per-seed paired differences (method − baseline, same arch and seed, group "main") in FPR95 and AUROC,
    in points, on ``set`` (default: the headline set, else the mean over OOD sets). For each (arch, method) a
    summary row gives mean ± std (ddof=1) over the paired seeds and the number of seeds where the method wins
    (lower FPR95, higher AUROC)."""
    ood_set = set
    d = select_rows(df, suite, score, ["main"])
    conv = one_convention(d, f"paired_differences({suite})")
    if ood_set is None:
        ood_set = headline_set(d) or MEAN
    d = d[d["ood_set"] == ood_set]
    if d.empty:
        raise ValueError(f"paired_differences: OOD set {ood_set!r} not in the results of suite {suite!r}")
    rows, index = [], []
    for arch in sorted(d["arch"].unique(), key=arch_key):
        base = d[(d["arch"] == arch) & (d["method"] == baseline)].set_index("seed")
        if base.empty:
            continue
        for m in methods:
            other = d[(d["arch"] == arch) & (d["method"] == m)].set_index("seed")
            seeds = sorted(builtins.set(base.index) & builtins.set(other.index))
            if not seeds:
                continue
            dfpr = [(other.at[s, "fpr95"] - base.at[s, "fpr95"]) * 100 for s in seeds]
            dauc = [(other.at[s, "auroc"] - base.at[s, "auroc"]) * 100 for s in seeds]
            for s, a, b in zip(seeds, dfpr, dauc):
                rows.append([signed(a), signed(b)])
                index.append((arch_name(arch), method_name(m), f"seed {s}"))
            wf = sum(x < 0 for x in dfpr)
            wa = sum(x > 0 for x in dauc)
            k = len(seeds)
            rows.append([f"{_pm_points(dfpr)} ({wf}/{k} wins)", f"{_pm_points(dauc)} ({wa}/{k} wins)"])
            index.append((arch_name(arch), method_name(m), "mean ± std"))
    if not rows:
        raise ValueError(f"paired_differences: no seed has both {baseline!r} and one of {list(methods)}")
    t = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Architecture", "Method", "Seed"]),
                     columns=["Δ FPR95 (pts) ↓", "Δ AUROC (pts) ↑"])
    t.attrs["caption"] = (
        f"{suite}: paired per-seed differences, method − {method_name(baseline)}, same architecture "
        f"and seed, on {set_name(ood_set)}{' (mean over OOD sets)' if ood_set == MEAN else ''}; "
        f"{score_name(score)} score, higher score = in-distribution; {convention_text(conv)}. "
        f"Points; mean ± std over seeds (ddof=1); wins = seeds with lower FPR95 / higher AUROC than the baseline.")
    return t


def _pm_points(v: Sequence[float]) -> str:
    v = np.asarray(v, dtype=float)
    if v.size == 1:
        return f"{v[0]:+.2f}"
    return f"{v.mean():+.2f} ± {v.std(ddof=1):.2f}"

