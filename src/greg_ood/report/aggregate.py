"""Aggregation shared by the tables and figures: row selection, conventions, mean ± std cells and captions.

Conventions. Metric values are fractions in the results files and percent in the tables. "mean ± std" is taken over
seeds with ddof=1, and a single seed prints no ±. Mixing FPR95 conventions in one table raises ``ValueError``.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from .names import GRAD_PAIRS, MEAN, METRIC_NAMES, METRICS, NATURAL_MEAN, SPLIT_MEAN_NAMES, score_name, set_name

def format_mean_std(values: Sequence[float], *, scale: float = 100.0, digits: int = 2) -> str:
    """``"20.00 ± 10.00"`` for fractions (0.1, 0.2, 0.3): percent, std over seeds with ddof=1. One value → no ±.
    NaNs are dropped; nothing left → ``"–"``."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float) * scale
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def signed(x: float, digits: int = 2) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:+.{digits}f}"


def convention_text(convention: str | Mapping) -> str:
    """Human-readable FPR95 convention from a convention key or a metrics-JSON ``convention`` block."""
    if isinstance(convention, str):
        c = dict(kv.split("=", 1) for kv in convention.split(";"))
    else:
        c = {k: str(v) for k, v in convention.items()}
    tpr = float(c.get("tpr", 0.95)) * 100
    rule = c.get("fpr_rule", "closest")
    if c.get("positive", "id") == "id":
        what = f"FPR95 = fraction of OOD samples accepted as ID at the threshold that keeps {tpr:g} % of ID " \
               f"(ID = positive class)"
        target = "ID recall"
    else:
        what = f"FPR95 = fraction of ID samples flagged OOD when {tpr:g} % of OOD is caught (OOD = positive class, " \
               f"OpenOOD convention)"
        target = "OOD recall"
    rules = {"closest": f"threshold whose {target} is closest to {tpr:g} %",
             "first": f"first threshold with {target} ≥ {tpr:g} %",
             "first_geq": f"first threshold with {target} ≥ {tpr:g} %",
             "quantile": f"threshold at the {tpr:g} % quantile of the positive scores"}
    return f"{what}; {rules.get(rule, f'threshold rule {rule!r}')}"


def one_convention(d: pd.DataFrame, what: str) -> str:
    convs = sorted(d["convention"].unique())
    if len(convs) > 1:
        srcs = {c: sorted(d.loc[d["convention"] == c, "experiment"].unique())[:3] for c in convs}
        raise ValueError(f"{what}: refusing to mix FPR95 conventions in one table: {srcs}")
    if not convs:
        raise ValueError(f"{what}: no rows")
    return convs[0]


def score_mask(df: pd.DataFrame, score: str) -> pd.Series:
    """Rows of one score; ``"primary"`` = each experiment's own primary score (e.g. DOS: absent-class)."""
    if score == "primary":
        return df["score"] == df["primary_score"]
    return df["score"] == score


def select_rows(df: pd.DataFrame, suite: str, score: str, groups: Sequence[str]) -> pd.DataFrame:
    d = df[(df["suite"] == suite) & (df["group"].isin(list(groups)))]
    if d.empty:
        raise ValueError(f"no results for suite {suite!r} in group(s) {list(groups)}")
    if score != "primary" and score not in set(d["score"]):
        raise ValueError(f"score {score!r} not in the results for suite {suite!r} "
                         f"(have {sorted(d['score'].unique())})")
    d = d[score_mask(d, score)]
    key = ["arch", "method", "lambda_grad", "seed", "ood_set", "group"]
    dup = d[d.duplicated(key, keep=False)]
    if not dup.empty:
        raise ValueError(f"duplicate results for the same run: {sorted(dup['experiment'].unique())}")
    return d


def _seeds_caption(ns: Iterable[int]) -> str:
    ns = sorted(set(int(n) for n in ns))
    if not ns:
        return "no seeds"
    if len(ns) == 1:
        return f"n = {ns[0]} seed{'s' if ns[0] != 1 else ''} per row"
    return f"n = {ns[0]}–{ns[-1]} seeds per row (column n)"


def headline_set(d: pd.DataFrame) -> Optional[str]:
    hs = [h for h in d["headline_set"].dropna().unique()]
    if len(hs) > 1:
        raise ValueError(f"experiments disagree on headline_set: {sorted(hs)}")
    return hs[0] if hs else None


def ood_sets(d: pd.DataFrame) -> list[str]:
    out: list[str] = []
    for s in d.loc[~d["is_mean"], "ood_set"]:
        if s not in out:
            out.append(s)
    return out


def natural_split(d: pd.DataFrame, natural: Optional[Sequence[str]]) -> list[str]:
    """The natural-image sets of ``d`` when they are a proper, non-empty subset of its OOD sets (then the tables
    show the natural-image mean beside the all-set mean); else ``[]`` (one mean, as before)."""
    if natural is None:
        return []
    sets = ood_sets(d)
    nat = [s for s in sets if s in set(natural)]
    return nat if 0 < len(nat) < len(sets) else []


def with_natural_mean(d: pd.DataFrame, natural_sets: Sequence[str]) -> pd.DataFrame:
    """``d`` plus, per experiment and score, one row ``ood_set == NATURAL_MEAN`` holding the unweighted mean of each
    metric over ``natural_sets`` (not an ``is_mean`` row: ID accuracy is read from the all-set mean row only)."""
    if not natural_sets:
        return d
    nat = d[d["ood_set"].isin(list(natural_sets)) & ~d["is_mean"]]
    keys = [c for c in d.columns if c not in (*METRICS, "ood_set", "is_mean")]
    means = nat.groupby(["experiment", "score"], sort=False)[list(METRICS)].mean().reset_index()
    first = nat.drop_duplicates(["experiment", "score"])[keys]
    rows = first.merge(means, on=["experiment", "score"]).assign(ood_set=NATURAL_MEAN, is_mean=False)
    return pd.concat([d, rows[d.columns]], ignore_index=True)


def mean_label(s: str, split: bool) -> str:
    """Display name of an OOD set column, the two means labelled apart when both are shown."""
    return SPLIT_MEAN_NAMES[s] if split and s in SPLIT_MEAN_NAMES else set_name(s)


def kinds_text(natural: Sequence[str], others: Sequence[str]) -> str:
    """The caption sentence that says what each mean averages and how the kinds were assigned."""
    return (f"{SPLIT_MEAN_NAMES[NATURAL_MEAN]} = unweighted mean over the {len(natural)} natural-image OOD sets "
            f"({', '.join(set_name(s) for s in natural)}): the paper's kind of mean; {SPLIT_MEAN_NAMES[MEAN]} = over "
            f"all {len(natural) + len(others)}, adding {', '.join(set_name(s) for s in others)}. Each set's kind is "
            f"declared in params.yaml (`kind:` of its entry under `suites.<suite>.data.ood`) from what the set is "
            f"— photographs or scans vs generated noise — not from any result.")


def cell(d: pd.DataFrame, metric: str) -> str:
    return format_mean_std(d[metric].tolist())


def caption(suite: str, score: str, conv: str, n_sets: int, nseeds: Iterable[int], extra: str = "",
            means: str = "") -> str:
    """A table's caption; ``means`` (:func:`kinds_text`) replaces the one-mean sentence when both means are shown."""
    means = means or f"Mean = unweighted mean over the {n_sets} OOD sets."
    return (f"{suite}: OOD detection with the {score_name(score)} score; higher score = "
            f"in-distribution. {convention_text(conv)}. AUROC ↑ does not depend on the positive class. Values in "
            f"% as mean ± std over seeds (std with ddof=1; a single seed shows no ±); {_seeds_caption(nseeds)}. "
            f"{means}{(' ' + extra) if extra else ''}")



def set_columns(sets: Sequence[str], head: Optional[str], metrics: Sequence[str],
                split: bool = False) -> list[tuple[str, str]]:
    """Column keys ``(set label, metric label)`` for each set in ``sets``; the headline set is marked; ``split``:
    the two means are labelled apart (:func:`mean_label`)."""
    return [(mean_label(s, split) + (" (headline)" if s == head else ""), METRIC_NAMES[m]) for s in sets
            for m in metrics]


def ablation_rows(df: pd.DataFrame, suite: str, score: str,
                  pairs: Sequence[tuple[str, str]] = GRAD_PAIRS) -> pd.DataFrame:
    """Rows of the λ_∇S ablation: group "ablation", the main runs of the same (arch, method) (the main λ_∇S point)
    and, when no ablation run has λ_∇S = 0, the main runs of the method without the gradient term (``pairs``: Energy
    for GReg) on the ablation's seeds, as the λ_∇S = 0 point (column ``lambda0_from`` names that method)."""
    d = df[(df["suite"] == suite) & score_mask(df, score)]
    ab = d[d["group"] == "ablation"]
    if ab.empty:
        raise ValueError(f"no ablation experiments (group 'ablation') for suite {suite!r}, score {score!r}")
    keys = set(zip(ab["arch"], ab["method"]))
    in_keys = np.array([(a, m) in keys for a, m in zip(d["arch"], d["method"])], dtype=bool)
    parts = [ab, d[(d["group"] == "main").to_numpy() & in_keys]]
    base_of = {withg: base for base, withg in pairs}
    for arch, method in sorted(keys):
        a = ab[(ab["arch"] == arch) & (ab["method"] == method)]
        base = base_of.get(method)
        if base is None or (a["lambda_grad"] == 0).any():
            continue
        b = d[(d["group"] == "main") & (d["arch"] == arch) & (d["method"] == base) & d["seed"].isin(a["seed"])]
        parts.append(b.assign(method=method, lambda_grad=0.0, lambda0_from=base))
    out = pd.concat(parts, ignore_index=True)
    if "lambda0_from" not in out.columns:
        out["lambda0_from"] = None
    dup = out[out.duplicated(["arch", "method", "lambda_grad", "seed", "ood_set"], keep=False)]
    if not dup.empty:
        raise ValueError(f"ablation: the same (arch, method, λ, seed) twice: {sorted(dup['experiment'].unique())}")
    return out


def metric_cells(g: pd.DataFrame, sets: Sequence[str], metrics: Sequence[str],
                 accuracy: bool = True) -> tuple[list[str], list[float]]:
    """One table row for the runs ``g``: ``n`` (seeds), "mean ± std" per (set, metric), then ID accuracy; and the
    matching seed means in percent (NaN for ``n``), from which the best values are marked."""
    cells, means = [str(g["seed"].nunique())], [math.nan]
    for s in sets:
        gs = g[g["ood_set"] == s]
        for m in metrics:
            cells.append(cell(gs, m))
            means.append(float(gs[m].mean() * 100) if gs[m].notna().any() else math.nan)
    if accuracy:
        acc = g.loc[g["is_mean"], "id_accuracy"]
        cells.append(cell(g[g["is_mean"]], "id_accuracy"))
        means.append(float(acc.mean() * 100) if acc.notna().any() else math.nan)
    return cells, means


def best_cells(means: Sequence[Sequence[float]], lower_better: Sequence[bool], groups: Sequence[object],
               digits: int = 2) -> list[tuple[int, int]]:
    """Positions (row, column) of the best value per column within each group of rows (ties: all of them), compared
    at the printed precision; ``lower_better[j]`` says the direction of column j (NaN columns are skipped)."""
    m = np.round(np.asarray(means, dtype=float), digits)
    out = []
    for grp in dict.fromkeys(groups):
        rows = [i for i, g in enumerate(groups) if g == grp]
        if len(rows) < 2:
            continue
        for j in range(m.shape[1]):
            col = m[rows, j]
            if np.isnan(col).all():
                continue
            best = np.nanmin(col) if lower_better[j] else np.nanmax(col)
            out += [(rows[k], j) for k in range(len(rows)) if col[k] == best]
    return out


def method_frame(rows: Sequence[Sequence[str]], index: Sequence[tuple[str, str]], columns: Sequence[tuple],
                 means: Sequence[Sequence[float]], lower_better: Sequence[bool]) -> pd.DataFrame:
    """A table with one row per (Architecture, Method) ``index`` entry and MultiIndex ``columns``, whose
    ``attrs["bold"]`` marks the best seed mean of each column within an architecture (:func:`best_cells`)."""
    t = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Architecture", "Method"]),
                     columns=pd.MultiIndex.from_tuples(columns))
    t.attrs["bold"] = best_cells(means, lower_better, [a for a, _ in index])
    return t


def summary_metrics(df: pd.DataFrame, *, suite: str, score: str) -> dict[str, dict]:
    """Compact per-run-group numbers for ``dvc metrics show``: for each (method, arch) of group "main", the mean
    and std over seeds (ddof=1; None for one seed) in percent, 2 decimals, of FPR95 and AUROC on the headline set
    (``headline_*``, when the suite has one) and on the mean over OOD sets (``mean_*``), the ID accuracy
    (``id_acc``), and ``n_seeds``. Keys ``<method>-<arch>``."""
    d = select_rows(df, suite, score, ["main"])
    head = headline_set(d)
    out = {}
    for (method, arch), g in d.groupby(["method", "arch"]):
        row: dict[str, object] = {"n_seeds": int(g["seed"].nunique())}
        for prefix, s in (("headline", head), ("mean", MEAN)):
            if s is None:
                continue
            gs = g[g["ood_set"] == s]
            for m in ("fpr95", "auroc"):
                row[f"{prefix}_{m}"], row[f"{prefix}_{m}_std"] = _mean_std_pct(gs[m])
        row["id_acc"], row["id_acc_std"] = _mean_std_pct(g.loc[g["is_mean"], "id_accuracy"])
        out[f"{method}-{arch}"] = row
    return out


def _mean_std_pct(v: pd.Series) -> tuple[Optional[float], Optional[float]]:
    v = v.dropna() * 100
    if v.empty:
        return None, None
    return round(float(v.mean()), 2), (round(float(v.std(ddof=1)), 2) if len(v) > 1 else None)
