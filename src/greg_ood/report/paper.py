"""Our numbers next to the GReg paper's reported numbers (``reports/paper/paper_numbers.csv``).

The mapping between the paper's names and ours (methods, architectures, benchmarks) lives here; every paper number is
second-hand and shown as "reported (unverified)".
"""
from __future__ import annotations

import math
import os
import re
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .aggregate import convention_text, format_mean_std, one_convention, select_rows, signed
from .loading import load_paper_numbers
from .names import (BASELINE_ORDER, BENCHMARK_NAMES, MEAN, METHOD_NAMES, METRIC_NAMES, arch_key, arch_name,
                    method_key, method_name, score_name, set_name)

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


class NoPaperNumbers(ValueError):
    """The paper file has no number for the suite (an offline suite, or a benchmark not transcribed)."""


#: paper methods with no counterpart here -> why no number of ours stands beside them
NOT_IMPLEMENTED = {"openmix": "OpenMix (another training method) is not implemented here",
                   "line": "LINe (a post-hoc pruning method) is not implemented here",
                   "msp_pretrained": "the pretrained model is not reported as a method of its own",
                   "energy_score_pretrained": "the pretrained model is not reported as a method of its own"}
#: the README section that lists how this project's protocol differs from the official code's
DIFFERENCES_HEADING = "Differences from the official code (o4lc/Greg-OOD) and why"
#: Paper in seed range: "n/a" with its reason
_NA_ONE_SEED, _NA_NO_PAPER, _NA_NOT_PRODUCED = "n/a (1 seed)", "n/a (no paper value)", "n/a (not produced)"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation other than ``-`` and ``_`` removed,
    spaces turned into ``-`` ("Differences from the official code (o4lc/Greg-OOD) and why" →
    "differences-from-the-official-code-o4lcgreg-ood-and-why")."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def seed_range_check(values_pct: Sequence[float], paper_value: float) -> tuple[str, str]:
    """Our per-seed values (percent) against one paper value: ``(range cell, verdict cell)``.

    Range cell: ``"[min, max]"`` over the seeds (2 decimals), ``"–"`` with fewer than 2 seeds. Verdict cell:
    ``"yes"`` when min ≤ paper ≤ max, compared at the printed precision (2 decimals, the paper's own), so that the
    cell agrees with the numbers a reader sees; ``"no (paper below)"`` / ``"no (paper above)"`` otherwise;
    ``"n/a (1 seed)"`` with one seed, ``"n/a (no paper value)"`` when the paper value is NaN (unknown) and
    ``"n/a (not produced)"`` without any value of ours.
    """
    v = [round(float(x), 2) for x in values_pct if not math.isnan(x)]
    if not v:
        return "–", _NA_NOT_PRODUCED
    lo, hi = min(v), max(v)
    rng = f"[{lo:.2f}, {hi:.2f}]" if len(v) > 1 else "–"
    if math.isnan(paper_value):
        return rng, _NA_NO_PAPER
    if len(v) < 2:
        return rng, _NA_ONE_SEED
    pv = round(float(paper_value), 2)
    return rng, "yes" if lo <= pv <= hi else ("no (paper below)" if pv < lo else "no (paper above)")


def _ours(d: pd.DataFrame, arch: Optional[str], method: Optional[str], ood_set: str, metric: str, *,
          paper_method_name: str) -> dict:
    """Our cells for one (arch, method, OOD set, metric): ``Ours`` (mean ± std or "not produced: <why>"), ``n``,
    the seed values in percent (``_vals``)."""
    why = None
    if method is None:
        why = NOT_IMPLEMENTED.get(paper_method_name, "the method is not implemented here")
    elif arch is None:
        why = "this architecture is not in the run"
    elif not (d["method"] == method).any():
        why = f"{method_name(method)} is not among this suite's methods"
    else:
        g = d[(d["arch"] == arch) & (d["method"] == method)]
        if g.empty:
            why = f"{method_name(method)} was not run for {arch_name(arch)}"
        elif not (g["ood_set"] == ood_set).any():
            why = f"OOD set {set_name(ood_set)} is not evaluated here"
    if why is not None:
        return {"Ours": f"not produced: {why}", "n": "0", "_vals": []}
    g = d[(d["arch"] == arch) & (d["method"] == method) & (d["ood_set"] == ood_set)]
    vals = (g[metric].dropna() * 100).tolist()
    return {"Ours": format_mean_std(g[metric].tolist()), "n": str(g["seed"].nunique()), "_vals": vals}


def _row(table: str, arch: str, method: str, ood_set: str, metric: str, paper_value: float, ours: dict,
         provenance: str, note: str, key: tuple) -> dict:
    vals = ours["_vals"]
    rng, inside = seed_range_check(vals, paper_value)
    mean = float(np.mean(vals)) if vals else math.nan
    return {"Source table": table, "Architecture": arch, "Method": method, "OOD set": ood_set,
            "Metric": METRIC_NAMES.get(metric, metric),
            "Paper": "n/r" if math.isnan(paper_value) else f"{paper_value:.2f}",
            "Ours": ours["Ours"], "n": ours["n"], "Seed range": rng,
            "Δ (ours − paper)": "n/a" if math.isnan(paper_value) or not vals else signed(mean - paper_value),
            "Paper in seed range": inside, "Provenance": provenance, "Note": note, "_k": key}


def paper_comparison(df: pd.DataFrame, paper_csv: os.PathLike | str, *, suite: str, score: str = "energy",
                     include_anchors: bool = True, readme_link: str = "../../README.md") -> pd.DataFrame:
    """Our numbers next to the paper's reported numbers for the same (benchmark, arch, method, OOD set, metric).

    One row per paper row of the suite's benchmark, in the file's order, then one per our main (arch, method) ×
    {FPR95, AUROC} mean that the paper does not report. Columns: Source table, Architecture, Method, OOD set,
    Metric, Paper (%, "n/r" = not reported / unknown), Ours (mean ± std over seeds, %, or "not produced: <why>"),
    n (seeds), Seed range ([min, max] of our seeds), Δ (ours − paper: our seed mean minus the paper's value, points),
    Paper in seed range (:func:`seed_range_check`), Provenance, Note. Mapping: ``energy`` ↔ ``energy_loss``;
    ``densenet100``/``densenet101`` ↔ ``densenet101``; suite ``imagenet`` ↔ benchmark ``imagenet10``.
    ``attrs["footer"]``: one sentence on the protocol differences that can explain a gap, linking the README's
    differences section (``readme_link`` is the README's path relative to the table's folder).
    Raises :class:`NoPaperNumbers` (a ``ValueError``) when the paper file has no number for the suite.
    """
    bench = SUITE_BENCHMARK.get(suite)
    paper = load_paper_numbers(paper_csv)
    paper = paper[paper["benchmark"] == bench] if bench else paper.iloc[0:0]
    if not include_anchors:
        paper = paper[paper["status"] != "anchor (other protocol)"]
    if paper.empty:
        raise NoPaperNumbers(f"paper_comparison: no paper numbers for suite {suite!r} (benchmark {bench!r})")
    d = select_rows(df, suite, score, ["main"])
    conv = one_convention(d, f"paper_comparison({suite})")
    our_archs = sorted(d["arch"].unique(), key=arch_key)
    rows, covered = [], set()
    for _, p in paper.iterrows():
        archs = [a for a in our_archs if OUR_TO_PAPER_ARCH.get(a, a) == p["arch"]] or [None]
        our_method = PAPER_TO_OUR_METHOD.get(p["method"])
        for a in archs:
            ours = _ours(d, a, our_method, p["ood_set"], p["metric"], paper_method_name=p["method"])
            covered.add((a, our_method, p["ood_set"], p["metric"]))
            note = [p["note"]] if p["note"] else []
            if a is not None and a != p["arch"]:
                note.append(f"our {a} ↔ paper {p['arch']}")
            if math.isnan(p["value"]):
                note.append("the paper's value is unknown (not in accessible sources)")
            rows.append(_row(p["table"], arch_name(a or p["arch"]), PAPER_METHOD_NAMES.get(p["method"], p["method"]),
                             set_name(p["ood_set"]), p["metric"], float(p["value"]), ours,
                             f"{p['provenance']} · {p['status']}", "; ".join(note), (0, arch_key(a or p["arch"]))))
    for a in our_archs:
        for m in sorted(d.loc[d["arch"] == a, "method"].unique(), key=method_key):
            for metric in ("fpr95", "auroc"):
                if (a, m, MEAN, metric) not in covered:
                    rows.append(_row("—", arch_name(a), method_name(m), "Mean", metric, math.nan,
                                     _ours(d, a, m, MEAN, metric, paper_method_name=m), "—",
                                     "not reported in accessible sources", (1, arch_key(a))))
    t = pd.DataFrame(rows).sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    t.attrs["caption"] = _caption(suite, bench, score, conv, int(d["n_ood_sets"].max()))
    t.attrs["footer"] = _protocol_sentence(suite, d, readme_link)
    return t


def _caption(suite: str, bench: str, score: str, conv: str, n_sets: int) -> str:
    text = (f"{suite}: our results next to the GReg paper's numbers (benchmark {bench}). Every paper number is "
            f"second-hand and shown as \"reported (unverified)\"; anchor rows come from other protocols. n/r = not "
            f"reported in accessible sources (the paper's value is unknown). Ours: {score_name(score)} score, higher "
            f"score = in-distribution; {convention_text(conv)}; mean ± std over seeds in % (ddof=1; one seed shows "
            f"no ±); Seed range = [min, max] over our seeds; Mean = unweighted mean over our {n_sets} OOD sets. "
            f"Δ = ours − paper in percentage points (our seed mean). Paper in seed range: whether the paper's value "
            f"lies within our [min, max] at 2 decimals (n/a with one seed, no paper value, or no value of ours). "
            f"Paper convention assumed: ID positive, closest-recall rule.")
    if not conv.startswith("positive=id;fpr_rule=closest"):
        text += " WARNING: our FPR95 convention differs from the paper's; FPR95 Δ is not comparable."
    return text


def _protocol_sentence(suite: str, d: pd.DataFrame, readme_link: str) -> str:
    """One sentence under the table: what differs between the paper's protocol and ours, with the README link."""
    n = sorted(d.loc[~d["method"].isin(BASELINE_ORDER), "seed"].unique())  # a baseline's own seed is not a run of ours
    return (f"A gap to the paper can come from the protocol rather than the method: {len(n)} seed"
            f"{'s' if len(n) != 1 else ''} here against the paper's unknown number of runs, second-hand paper numbers "
            f"(anchor rows: another protocol), and this project's documented departures from the official code, "
            f"listed in [{DIFFERENCES_HEADING}]({readme_link}#{github_anchor(DIFFERENCES_HEADING)}).")


def no_paper_numbers_text(suite: str, paper_csv: Optional[os.PathLike | str]) -> str:
    """``paper_comparison.md`` of a suite the paper has no numbers for (the offline suites): a plain statement
    instead of an empty table."""
    bench = SUITE_BENCHMARK.get(suite)
    why = (f"suite `{suite}` is this project's own construction, with no counterpart in the GReg paper"
           if bench is None else f"`{paper_csv}` holds no number for the suite's benchmark `{bench}`")
    return (f"# {suite}: comparison with the paper's numbers\n\n"
            f"No paper numbers apply: {why}. Nothing of ours is compared with a paper value here; the paper's "
            f"claims (directions of the effects, not values) are tested on this suite's own runs in "
            f"[claims.md](claims.md).\n")


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
