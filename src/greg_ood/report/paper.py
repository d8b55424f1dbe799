"""Our numbers next to the GReg paper's reported numbers (``reports/paper/paper_numbers.csv``).

The mapping between the paper's names and ours (methods, architectures, benchmarks) lives here; every paper number is
second-hand and shown as "reported (unverified)".
"""
from __future__ import annotations

import math
import os

import pandas as pd

from .aggregate import convention_text, format_mean_std, one_convention, select_rows, signed
from .loading import load_paper_numbers
from .names import (BENCHMARK_NAMES, MEAN, METHOD_NAMES, METRIC_NAMES, arch_key, arch_name, method_key, method_name,
                    score_name, set_name)

#: our suite -> the paper's benchmark name in paper_numbers.csv
SUITE_BENCHMARK = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet10"}
#: paper method -> our method (anchor methods of the energy_ood README included)
PAPER_TO_OUR_METHOD = {"energy_loss": "energy", "oe": "oe", "oe_grad": "oe_grad", "dos": "dos", "greg": "greg",
                       "greg_plus": "greg_plus", "poem": "poem", "poem_grad": "poem_grad", "energy_finetune": "energy",
                       "oe_finetune": "oe"}
PAPER_METHOD_NAMES = {"energy_loss": "Energy", "openmix": "OpenMix", "line": "LINe", "poem": "POEM",
                      "poem_grad": "POEM + grad", "msp_pretrained": "MSP (pretrained)",
                      "energy_score_pretrained": "Energy score (pretrained)", "oe_finetune": "OE fine-tune",
                      "energy_finetune": "Energy fine-tune", **METHOD_NAMES}
#: our arch -> the paper's arch name
OUR_TO_PAPER_ARCH = {"densenet100": "densenet101", "densenet101": "densenet101"}


def paper_comparison(df: pd.DataFrame, paper_csv: os.PathLike | str, *, suite: str, score: str = "energy",
                     include_anchors: bool = True) -> pd.DataFrame:
    """Our numbers next to the paper's reported numbers for the same (benchmark, arch, method, OOD set, metric).

    One row per paper row of the suite's benchmark (plus one per our main (arch, method) × {FPR95, AUROC} mean that
    the paper does not report, with Paper = "n/r"). Columns: Source table, Architecture, Method, OOD set, Metric,
    Ours (mean ± std, %), n, Paper (%), Δ (ours − paper, points), Provenance, Note. Our methods the run did not
    include show "not run". Mapping: ``energy`` ↔ ``energy_loss``; ``densenet100``/``densenet101`` ↔
    ``densenet101``; suite ``imagenet`` ↔ benchmark ``imagenet10``.
    """
    bench = SUITE_BENCHMARK.get(suite)
    paper = load_paper_numbers(paper_csv)
    paper = paper[paper["benchmark"] == bench] if bench else paper.iloc[0:0]
    if not include_anchors:
        paper = paper[paper["status"] != "anchor (other protocol)"]
    if paper.empty:
        raise ValueError(f"paper_comparison: no paper numbers for suite {suite!r} (benchmark {bench!r})")
    d = select_rows(df, suite, score, ["main"])
    conv = one_convention(d, f"paper_comparison({suite})")

    def ours(arch: str, method: str, ood_set: str, metric: str) -> tuple[str, str, float]:
        g = d[(d["arch"] == arch) & (d["method"] == method) & (d["ood_set"] == ood_set)]
        if g.empty:
            return "not run", "0", math.nan
        v = g[metric].dropna()
        return format_mean_std(v.tolist()), str(g["seed"].nunique()), (v.mean() * 100 if len(v) else math.nan)

    our_archs = sorted(d["arch"].unique(), key=arch_key)
    rows, covered = [], set()
    for _, p in paper.iterrows():
        archs = [a for a in our_archs if OUR_TO_PAPER_ARCH.get(a, a) == p["arch"]] or [None]
        our_method = PAPER_TO_OUR_METHOD.get(p["method"])
        for a in archs:
            if a is None or our_method is None:
                o, n, val = ("not run" if our_method else "no counterpart"), "0", math.nan
            else:
                o, n, val = ours(a, our_method, p["ood_set"], p["metric"])
                covered.add((a, our_method, p["ood_set"], p["metric"]))
            note = [p["note"]] if p["note"] else []
            if a is not None and a != p["arch"]:
                note.append(f"our {a} ↔ paper {p['arch']}")
            rows.append({"Source table": p["table"],
                         "Architecture": arch_name(a or p["arch"]),
                         "Method": PAPER_METHOD_NAMES.get(p["method"], p["method"]),
                         "OOD set": set_name(p["ood_set"]), "Metric": METRIC_NAMES.get(p["metric"], p["metric"]),
                         "Ours": o, "n": n, "Paper": f"{p['value']:.2f}",
                         "Δ (ours − paper)": signed(val - p["value"]),
                         "Provenance": f"{p['provenance']} · {p['status']}", "Note": "; ".join(note),
                         "_k": (0, arch_key(a or p["arch"]))})
    for a in our_archs:
        for m in sorted(d.loc[d["arch"] == a, "method"].unique(), key=method_key):
            for metric in ("fpr95", "auroc"):
                if (a, m, MEAN, metric) in covered:
                    continue
                o, n, _ = ours(a, m, MEAN, metric)
                rows.append({"Source table": "—", "Architecture": arch_name(a),
                             "Method": method_name(m), "OOD set": "Mean",
                             "Metric": METRIC_NAMES[metric], "Ours": o, "n": n, "Paper": "n/r",
                             "Δ (ours − paper)": "n/r", "Provenance": "—",
                             "Note": "not reported in accessible sources", "_k": (1, arch_key(a))})
    t = pd.DataFrame(rows)
    t = t.sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    n_sets = int(d["n_ood_sets"].max())
    t.attrs["caption"] = (
        f"{suite}: our results next to the GReg paper's numbers (benchmark {bench}). Every paper number is "
        f"second-hand and shown as \"reported (unverified)\"; anchor rows come from other protocols. n/r = not "
        f"reported in accessible sources. Ours: {score_name(score)} score, higher score = "
        f"in-distribution; {convention_text(conv)}; mean ± std over seeds in % (ddof=1); Mean = unweighted mean "
        f"over our {n_sets} OOD sets. Δ = ours − paper in percentage points (our seed mean). Paper convention "
        f"assumed: ID positive, closest-recall rule.")
    if not conv.startswith("positive=id;fpr_rule=closest"):
        t.attrs["caption"] += " WARNING: our FPR95 convention differs from the paper's; FPR95 Δ is not comparable."
    return t



def paper_method(our_method: str) -> str:
    """The paper's name of one of our methods (``energy`` → ``energy_loss``); unknown names are the same there."""
    return next((k for k, v in PAPER_TO_OUR_METHOD.items() if v == our_method), our_method)


def paper_pair_text(paper: pd.DataFrame, base: str, other: str, metric: str, ood_set: str = MEAN) -> str:
    """The paper's numbers for ``base`` → ``other`` (our method names) on ``metric`` and ``ood_set``, for every
    (benchmark, arch) of a non-anchor table reporting both: "CIFAR-10 ResNet-18: 11.14 → 7.90 (−3.24)"; joined
    by "; ". "" when the paper gives none. ``paper``: :func:`load_paper_numbers`."""
    p = paper[(paper["status"] != "anchor (other protocol)") & (paper["metric"] == metric)
              & (paper["ood_set"] == ood_set)]
    a = p[p["method"] == paper_method(base)].set_index(["table", "benchmark", "arch"])["value"]
    b = p[p["method"] == paper_method(other)].set_index(["table", "benchmark", "arch"])["value"]
    parts = []
    for key in [k for k in a.index if k in b.index]:
        _, bench, arch = key
        va, vb = a[key], b[key]
        parts.append(f"{BENCHMARK_NAMES.get(bench, bench)} {arch_name(arch)}: {va:.2f} → {vb:.2f} ({vb - va:+.2f})")
    return "; ".join(dict.fromkeys(parts))
