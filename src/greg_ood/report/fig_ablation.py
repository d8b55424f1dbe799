"""Figure of the λ_∇S ablation: detection quality against the weight of the gradient term, with λ_∇S = 0 taken
from the method without the term (Energy for GReg) on the same seeds."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pandas as pd

from .aggregate import ablation_rows, headline_set, one_convention
from .names import MEAN, METRIC_NAMES, arch_name, method_name, score_name, set_name
from .plotting import figure, grid, hide_unused, save, suptitle


def plot_ablation(df: pd.DataFrame, path: os.PathLike | str, *, suite: Optional[str] = None,
                  score: str = "energy") -> Path:
    """FPR95 and AUROC (%) on the headline set and on the mean over OOD sets, and the ID accuracy, against λ_∇S,
    one panel each (so each effect gets its own scale), mean ± std over seeds as error bars. Symlog x axis (linear
    below the smallest positive λ), so λ = 0 is drawn; its tick names the method it comes from, e.g. "0 (Energy)"."""
    if suite is None:
        suites = df.loc[df["group"] == "ablation", "suite"].unique()
        if len(suites) != 1:
            raise ValueError(f"plot_ablation: pass suite= (ablation results for {sorted(suites)})")
        suite = suites[0]
    d = ablation_rows(df, suite, score)
    conv = one_convention(d, f"plot_ablation({suite})")
    head = headline_set(d)
    sets = ([head] if head else []) + [MEAN]
    lams = sorted(d["lambda_grad"].dropna().unique())
    pos = [x for x in lams if x > 0]
    base = d["lambda0_from"].dropna()
    tick_labels = [f"0 ({method_name(base.iloc[0])})" if x == 0 and len(base) else f"{x:g}" for x in lams]
    panels = [(m, s) for s in sets for m in ("fpr95", "auroc")]
    panels.insert(2, ("id_accuracy", MEAN))
    fig, axes = figure(*grid(len(panels)), w=4.4, h=3.6)
    for ax, (metric, s) in zip(axes, panels):
        for (arch, method), g in d.groupby(["arch", "method"]):
            gs = g[g["ood_set"] == s].groupby("lambda_grad")[metric]
            stats = pd.DataFrame({"m": gs.mean() * 100, "s": gs.std(ddof=1).fillna(0) * 100}).sort_index()
            n = int(g.groupby("lambda_grad")["seed"].nunique().min())
            ax.errorbar(stats.index, stats["m"], yerr=stats["s"], marker="o", capsize=3,
                        label=f"{arch_name(arch)} {method_name(method)} (n = {n})")
        if pos:
            ax.set_xscale("symlog", linthresh=float(min(pos)))
        ax.set_xticks(lams, tick_labels, fontsize=7)
        ax.minorticks_off()
        where = "ID test" if metric == "id_accuracy" else set_name(s)
        ax.set(xlabel=r"$\lambda_{\nabla S}$ (symlog axis)", ylabel=f"{METRIC_NAMES[metric]} (%)",
               title=f"{METRIC_NAMES[metric]}, {where}")
        ax.legend(fontsize=7)
    hide_unused(axes, len(panels))
    c = dict(kv.split("=", 1) for kv in conv.split(";"))
    suptitle(fig, f"{suite}: λ_∇S ablation — {score_name(score)} score, higher = ID; "
                 f"{c['positive'].upper()} positive, {c['fpr_rule']} rule; error bars: std over seeds", fontsize=9)
    return save(fig, path)
