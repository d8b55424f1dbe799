"""Reporting: result tables (Markdown / LaTeX / CSV), figures (PNG), and the comparison with the paper's numbers.

Pure library code. Every input and output path is an argument. There is no argv, no MLflow and no global state;
matplotlib is used through its object-oriented Agg canvas, so the process-wide pyplot backend is never touched.

Inputs are the files described in ``docs/CONTRACTS.md``:

* metrics JSON  (``metrics/<suite>/<experiment>.json``)   -> :func:`load_results`
* score arrays  (``scores/<suite>/<experiment>.npz``)     -> :func:`plot_score_histograms`
* ROC points    (``plots/<suite>/<experiment>/roc.json``) -> :func:`plot_roc`
* train log     (``metrics/<suite>/<experiment>.train.csv``) -> :func:`plot_training_curves`
* certify npz   (``certify/<suite>/<experiment>.npz``)    -> :func:`load_certify` + :func:`plot_certify`

Conventions. Metric values are fractions in the files and percent in the tables. "mean ± std" is taken over seeds
with ddof=1, and a single seed prints no ±. Each table's caption states the score, that a higher score means ID, and
the FPR95 convention read from the metrics files. Mixing conventions in one table raises ``ValueError``.
"""
from __future__ import annotations

import builtins
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from .io import remove_stale_temps, write_bytes_atomic

__all__ = [
    "METHOD_ORDER", "METHOD_NAMES", "ARCH_NAMES", "SUITE_BENCHMARK",
    "load_results", "load_paper_numbers", "load_certify",
    "main_table", "paper_comparison", "ablation_table", "grad_ablation_table", "paired_differences",
    "format_mean_std", "convention_text", "latex_escape",
    "write_table", "table_to_markdown", "table_to_latex",
    "plot_roc", "plot_score_histograms", "plot_training_curves", "plot_ablation", "plot_selection", "plot_certify",
    "build_suite_report",
]

# ----------------------------------------------------------------------------------------------------- vocabulary
METHOD_ORDER = ("energy", "oe", "oe_grad", "dos", "greg", "greg_plus")
METHOD_NAMES = {"energy": "Energy", "oe": "OE", "oe_grad": "OE + grad", "dos": "DOS", "greg": "GReg",
                "greg_plus": "GReg+"}
ARCH_ORDER = ("small_cnn", "resnet18", "wrn40_2", "densenet100", "densenet101", "densenet121")
ARCH_NAMES = {"small_cnn": "Small CNN", "resnet18": "ResNet-18", "wrn40_2": "WRN-40-2",
              "densenet100": "DenseNet-100", "densenet101": "DenseNet-101", "densenet121": "DenseNet-121"}
SET_NAMES = {"textures": "Textures", "dtd": "Textures", "svhn": "SVHN", "places365": "Places365",
             "places": "Places", "lsun_crop": "LSUN-C", "lsun_resize": "LSUN-R", "isun": "iSUN",
             "sun": "SUN", "inaturalist": "iNaturalist", "mean": "Mean"}
SCORE_NAMES = {"energy": "energy (−E)", "msp": "MSP", "max_logit": "max logit", "odin": "ODIN",
               "mahalanobis": "Mahalanobis", "absent_class": "absent-class",
               "primary": "method's own (energy −E; DOS: absent-class 1 − p_K+1)"}
#: our suite -> the paper's benchmark name in paper_numbers.csv
SUITE_BENCHMARK = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet10"}
#: paper method -> our method (anchor methods of the energy_ood README included)
PAPER_TO_OUR_METHOD = {"energy_loss": "energy", "oe": "oe", "oe_grad": "oe_grad", "dos": "dos", "greg": "greg",
                       "greg_plus": "greg_plus", "energy_finetune": "energy", "oe_finetune": "oe"}
PAPER_METHOD_NAMES = {"energy_loss": "Energy", "openmix": "OpenMix", "line": "LINe", "poem": "POEM",
                      "poem_grad": "POEM + grad", "msp_pretrained": "MSP (pretrained)",
                      "energy_score_pretrained": "Energy score (pretrained)", "oe_finetune": "OE fine-tune",
                      "energy_finetune": "Energy fine-tune", **METHOD_NAMES}
#: our arch -> the paper's arch name
OUR_TO_PAPER_ARCH = {"densenet100": "densenet101", "densenet101": "densenet101"}
METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out")
METRIC_NAMES = {"fpr95": "FPR95 ↓", "auroc": "AUROC ↑", "aupr_in": "AUPR-In ↑", "aupr_out": "AUPR-Out ↑",
                "id_accuracy": "ID acc. ↑"}
LOWER_IS_BETTER = {"fpr95"}
MEAN = "mean"  # reserved ood_set name of the unweighted mean over OOD sets

_REQUIRED_TOP = ("experiment", "suite", "method", "arch", "seed", "group", "lambda_grad", "lambda_energy",
                 "convention", "id_accuracy", "fpr95", "auroc", "aupr_in", "aupr_out", "scores", "ood_sets",
                 "headline_set")
_REQUIRED_CONVENTION = ("primary_score", "positive", "fpr_rule", "tpr")
_GROUPS = ("main", "ablation", "grad_ablation")
_TOL = 1e-6


def _method_key(m: str) -> tuple:
    return (METHOD_ORDER.index(m), m) if m in METHOD_ORDER else (len(METHOD_ORDER), m)


def _arch_key(a: str) -> tuple:
    return (ARCH_ORDER.index(a), a) if a in ARCH_ORDER else (len(ARCH_ORDER), a)


def _set_name(s: str) -> str:
    return SET_NAMES.get(s, s)


# ---------------------------------------------------------------------------------------------------- loading
def _require(d: Mapping, keys: Iterable[str], where: str, path: Path) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{path}: {where or 'top level'} must be a JSON object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}" + (f" in {where}" if where else ""))


def _fraction(v, where: str, path: Path) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{path}: {where} must be a number, got {v!r}")
    v = float(v)
    if not math.isnan(v) and not (-_TOL <= v <= 1 + _TOL):
        raise ValueError(f"{path}: {where} = {v} is not a fraction in [0, 1] (the metrics files store fractions)")
    return v


def load_results(metrics_files: Iterable[os.PathLike | str]) -> pd.DataFrame:
    """Read metrics JSON files (CONTRACTS.md) into one long DataFrame.

    One row per experiment × score × OOD set, plus one row per experiment × score with ``ood_set == "mean"`` (the
    file's ``scores.<score>.mean``). Columns: ``experiment, suite, method, arch, seed, group, lambda_grad,
    lambda_energy, primary_score, positive, fpr_rule, tpr, convention, id_accuracy, headline_set, n_ood_sets,
    score, ood_set, is_mean, fpr95, auroc, aupr_in, aupr_out, source``. ``convention`` is a hashable string key
    ("positive=id;fpr_rule=closest;tpr=0.95").

    Raises ``ValueError`` that names the file when a key is missing, a value is not a fraction, the top-level
    metrics disagree with the primary score's mean, a per-set metric is missing for a listed OOD set, or two files
    hold the same experiment.
    """
    rows: list[dict] = []
    seen: dict[str, Path] = {}
    for f in metrics_files:
        path = Path(f)
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        _require(doc, _REQUIRED_TOP, "", path)
        conv = doc["convention"]
        _require(conv, _REQUIRED_CONVENTION, "convention", path)
        if conv["positive"] not in ("id", "ood"):
            raise ValueError(f"{path}: convention.positive must be 'id' or 'ood', got {conv['positive']!r}")
        if doc["group"] not in _GROUPS:
            raise ValueError(f"{path}: group must be one of {_GROUPS}, got {doc['group']!r}")
        exp = str(doc["experiment"])
        if exp in seen:
            raise ValueError(f"{path}: experiment {exp!r} is also in {seen[exp]}")
        seen[exp] = path
        ood_sets = list(doc["ood_sets"])
        if not ood_sets:
            raise ValueError(f"{path}: ood_sets is empty")
        if MEAN in ood_sets:
            raise ValueError(f"{path}: an OOD set may not be called {MEAN!r} (reserved for the mean row)")
        headline = doc["headline_set"]
        if headline is not None and headline not in ood_sets:
            raise ValueError(f"{path}: headline_set {headline!r} is not in ood_sets {ood_sets}")
        scores = doc["scores"]
        if not isinstance(scores, Mapping) or conv["primary_score"] not in scores:
            raise ValueError(f"{path}: missing key {conv['primary_score']!r} (the primary score) in scores")
        tpr = float(conv["tpr"])
        base = {
            "experiment": exp, "suite": str(doc["suite"]), "method": str(doc["method"]), "arch": str(doc["arch"]),
            "seed": int(doc["seed"]), "group": str(doc["group"]),
            "lambda_grad": math.nan if doc["lambda_grad"] is None else float(doc["lambda_grad"]),
            "lambda_energy": math.nan if doc["lambda_energy"] is None else float(doc["lambda_energy"]),
            "primary_score": str(conv["primary_score"]), "positive": str(conv["positive"]),
            "fpr_rule": str(conv["fpr_rule"]), "tpr": tpr,
            "convention": f"positive={conv['positive']};fpr_rule={conv['fpr_rule']};tpr={tpr:g}",
            "id_accuracy": _fraction(doc["id_accuracy"], "id_accuracy", path),
            "headline_set": headline, "n_ood_sets": len(ood_sets), "source": str(path),
        }
        for score, block in scores.items():
            where = f"scores.{score}"
            _require(block, ("per_set", "mean"), where, path)
            _require(block["per_set"], ood_sets, f"{where}.per_set", path)
            per_set_vals = {}
            for s in ood_sets:
                m = block["per_set"][s]
                _require(m, METRICS, f"{where}.per_set.{s}", path)
                vals = {k: _fraction(m[k], f"{where}.per_set.{s}.{k}", path) for k in METRICS}
                per_set_vals[s] = vals
                rows.append({**base, "score": str(score), "ood_set": s, "is_mean": False, **vals})
            _require(block["mean"], METRICS, f"{where}.mean", path)
            mean_vals = {k: _fraction(block["mean"][k], f"{where}.mean.{k}", path) for k in METRICS}
            for k in ("fpr95", "auroc"):  # the contract: unweighted mean over the OOD sets
                expect = float(np.mean([per_set_vals[s][k] for s in ood_sets]))
                if not math.isnan(expect) and not math.isclose(mean_vals[k], expect, abs_tol=1e-5):
                    raise ValueError(f"{path}: {where}.mean.{k} = {mean_vals[k]} is not the unweighted mean "
                                     f"over ood_sets ({expect})")
            if score == conv["primary_score"]:
                for k in METRICS:
                    top = _fraction(doc[k], k, path)
                    if not (math.isnan(top) and math.isnan(mean_vals[k])) and \
                            not math.isclose(top, mean_vals[k], abs_tol=1e-6):
                        raise ValueError(f"{path}: top-level {k} = {top} differs from {where}.mean.{k} = "
                                         f"{mean_vals[k]}")
            rows.append({**base, "score": str(score), "ood_set": MEAN, "is_mean": True, **mean_vals})
    if not rows:
        raise ValueError("load_results: no metrics files given")
    return pd.DataFrame(rows)


def load_paper_numbers(paper_csv: os.PathLike | str) -> pd.DataFrame:
    """Read ``reports/paper/paper_numbers.csv``. A trailing ``?`` on the arch (the brief's marking) is turned into
    ``note = "architecture inferred"``. Adds ``status``: "reported (unverified)", or "anchor (other protocol)" for
    rows whose ``table`` starts with ``anchor``."""
    path = Path(paper_csv)
    p = pd.read_csv(path, dtype=str, keep_default_na=False)
    need = ["table", "benchmark", "arch", "method", "ood_set", "metric", "value", "provenance"]
    missing = [c for c in need if c not in p.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    if "note" not in p.columns:
        p["note"] = ""
    inferred = p["arch"].str.endswith("?")
    p.loc[inferred, "arch"] = p.loc[inferred, "arch"].str.rstrip("?")
    p.loc[inferred & (p["note"] == ""), "note"] = "architecture inferred"
    try:
        p["value"] = p["value"].astype(float)
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric value ({e})") from e
    p["status"] = np.where(p["table"].str.startswith("anchor"), "anchor (other protocol)", "reported (unverified)")
    return p


def load_certify(path: os.PathLike | str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read a certify ``.npz`` (a ``.json`` path is redirected to its sibling ``.npz``).

    Expected keys ``grad_norm/<set>`` and ``radius/<set>`` (``grad_norms``/``gradnorm`` and ``radii`` are also
    accepted). Returns ``(grad_norms, radii)`` as dicts keyed by set. Raises ``ValueError`` naming the file when
    neither kind of key is present.
    """
    p = Path(path)
    if p.suffix == ".json":
        p = p.with_suffix(".npz")
    grads: dict[str, np.ndarray] = {}
    radii: dict[str, np.ndarray] = {}
    with np.load(p) as z:
        for key in z.files:
            kind, _, s = key.partition("/")
            if not s:
                continue
            if kind in ("grad_norm", "grad_norms", "gradnorm"):
                grads[s] = np.asarray(z[key], dtype=float).ravel()
            elif kind in ("radius", "radii"):
                radii[s] = np.asarray(z[key], dtype=float).ravel()
    if not grads and not radii:
        raise ValueError(f"{p}: no 'grad_norm/<set>' or 'radius/<set>' arrays")
    return grads, radii


# ---------------------------------------------------------------------------------------------- aggregation
def format_mean_std(values: Sequence[float], *, scale: float = 100.0, digits: int = 2) -> str:
    """``"20.00 ± 10.00"`` for fractions (0.1, 0.2, 0.3): percent, std over seeds with ddof=1. One value → no ±.
    NaNs are dropped; nothing left → ``"–"``."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float) * scale
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _signed(x: float, digits: int = 2) -> str:
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


def _one_convention(d: pd.DataFrame, what: str) -> str:
    convs = sorted(d["convention"].unique())
    if len(convs) > 1:
        srcs = {c: sorted(d.loc[d["convention"] == c, "experiment"].unique())[:3] for c in convs}
        raise ValueError(f"{what}: refusing to mix FPR95 conventions in one table: {srcs}")
    if not convs:
        raise ValueError(f"{what}: no rows")
    return convs[0]


def _score_mask(df: pd.DataFrame, score: str) -> pd.Series:
    """Rows of one score; ``"primary"`` = each experiment's own primary score (e.g. DOS: absent-class)."""
    if score == "primary":
        return df["score"] == df["primary_score"]
    return df["score"] == score


def _select(df: pd.DataFrame, suite: str, score: str, groups: Sequence[str]) -> pd.DataFrame:
    d = df[(df["suite"] == suite) & (df["group"].isin(list(groups)))]
    if d.empty:
        raise ValueError(f"no results for suite {suite!r} in group(s) {list(groups)}")
    if score != "primary" and score not in set(d["score"]):
        raise ValueError(f"score {score!r} not in the results for suite {suite!r} "
                         f"(have {sorted(d['score'].unique())})")
    d = d[_score_mask(d, score)]
    key = ["arch", "method", "lambda_grad", "seed", "ood_set", "group"]
    dup = d[d.duplicated(key, keep=False)]
    if not dup.empty:
        raise ValueError(f"duplicate results for the same run: {sorted(dup['experiment'].unique())}")
    return d


def _seeds_caption(ns: Iterable[int]) -> str:
    ns = sorted(builtins.set(int(n) for n in ns))
    if not ns:
        return "no seeds"
    if len(ns) == 1:
        return f"n = {ns[0]} seed{'s' if ns[0] != 1 else ''} per row"
    return f"n = {ns[0]}–{ns[-1]} seeds per row (column n)"


def _headline(d: pd.DataFrame) -> Optional[str]:
    hs = [h for h in d["headline_set"].dropna().unique()]
    if len(hs) > 1:
        raise ValueError(f"experiments disagree on headline_set: {sorted(hs)}")
    return hs[0] if hs else None


def _ood_sets(d: pd.DataFrame) -> list[str]:
    out: list[str] = []
    for s in d.loc[~d["is_mean"], "ood_set"]:
        if s not in out:
            out.append(s)
    return out


def _cell(d: pd.DataFrame, metric: str) -> str:
    return format_mean_std(d[metric].tolist())


def _caption(suite: str, score: str, conv: str, n_sets: int, nseeds: Iterable[int], extra: str = "") -> str:
    return (f"{suite}: OOD detection with the {SCORE_NAMES.get(score, score)} score; higher score = "
            f"in-distribution. {convention_text(conv)}. AUROC ↑ does not depend on the positive class. Values in "
            f"% as mean ± std over seeds (std with ddof=1; a single seed shows no ±); {_seeds_caption(nseeds)}. "
            f"Mean = unweighted mean over the {n_sets} OOD sets.{(' ' + extra) if extra else ''}")


# ------------------------------------------------------------------------------------------------- tables
def main_table(df: pd.DataFrame, *, suite: str, score: str = "energy", metrics: Sequence[str] = ("fpr95", "auroc"),
               group: str = "main", headline: Optional[bool] = None, per_set: bool = True,
               include_accuracy: bool = True) -> pd.DataFrame:
    """Paper-style main table.

    Rows: MultiIndex (Architecture, Method), one row group per architecture, methods in the order energy, oe,
    oe_grad, dos, greg, greg_plus (others after). Columns: MultiIndex (set, metric), with ``("", "n")`` the number
    of seeds, each OOD set's metrics, then ``Mean``, then ``("ID", "ID acc. ↑")``. Cells are strings,
    "mean ± std" in percent. The caption (``table.attrs["caption"]``) states the score, higher = ID, the FPR95
    convention read from the data, and the seeds. ``headline`` (default: ``suite == "mini"``) puts the
    ``headline_set`` first, marked "(headline)".
    """
    d = _select(df, suite, score, [group])
    conv = _one_convention(d, f"main_table({suite}, {score})")
    sets = _ood_sets(d)
    head = _headline(d)
    use_headline = (suite == "mini") if headline is None else headline
    if use_headline and head is not None:
        sets = [head] + [s for s in sets if s != head]
    shown = (sets if per_set else ([head] if use_headline and head else [])) + [MEAN]
    cols: list[tuple[str, str]] = [("", "n")]
    for s in shown:
        label = _set_name(s) + (" (headline)" if use_headline and s == head else "")
        cols += [(label, METRIC_NAMES[m]) for m in metrics]
    if include_accuracy:
        cols.append(("", METRIC_NAMES["id_accuracy"]))
    rows, index, nseeds = [], [], []
    for (arch, method), g in sorted(d.groupby(["arch", "method"]), key=lambda kv: (_arch_key(kv[0][0]),
                                                                                   _method_key(kv[0][1]))):
        lams = g["lambda_grad"].unique()
        n = g["seed"].nunique()
        nseeds.append(n)
        row = [str(n)]
        for s in shown:
            gs = g[g["ood_set"] == s]
            row += [_cell(gs, m) for m in metrics]
        if include_accuracy:
            row.append(_cell(g[g["is_mean"]], "id_accuracy"))
        name = METHOD_NAMES.get(method, method)
        if len(lams) > 1:
            raise ValueError(f"main_table: {arch}/{method} mixes lambda_grad values {sorted(lams)}; "
                             f"use ablation_table")
        rows.append(row)
        index.append((ARCH_NAMES.get(arch, arch), name))
    t = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Architecture", "Method"]),
                     columns=pd.MultiIndex.from_tuples(cols))
    extra = "ID acc. = top-1 accuracy on the ID test set." if include_accuracy else ""
    if use_headline and head is not None:
        extra += f" Headline column: {_set_name(head)} (near-OOD), placed first."
    t.attrs["caption"] = _caption(suite, score, conv, len(_ood_sets(d)), nseeds, extra.strip())
    return t


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
    d = _select(df, suite, score, ["main"])
    conv = _one_convention(d, f"paper_comparison({suite})")

    def ours(arch: str, method: str, ood_set: str, metric: str) -> tuple[str, str, float]:
        g = d[(d["arch"] == arch) & (d["method"] == method) & (d["ood_set"] == ood_set)]
        if g.empty:
            return "not run", "0", math.nan
        v = g[metric].dropna()
        return format_mean_std(v.tolist()), str(g["seed"].nunique()), (v.mean() * 100 if len(v) else math.nan)

    our_archs = sorted(d["arch"].unique(), key=_arch_key)
    rows, covered = [], builtins.set()
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
                         "Architecture": ARCH_NAMES.get(a or p["arch"], a or p["arch"]),
                         "Method": PAPER_METHOD_NAMES.get(p["method"], p["method"]),
                         "OOD set": _set_name(p["ood_set"]), "Metric": METRIC_NAMES.get(p["metric"], p["metric"]),
                         "Ours": o, "n": n, "Paper": f"{p['value']:.2f}",
                         "Δ (ours − paper)": _signed(val - p["value"]),
                         "Provenance": f"{p['provenance']} · {p['status']}", "Note": "; ".join(note),
                         "_k": (0, _arch_key(a or p["arch"]))})
    for a in our_archs:
        for m in sorted(d.loc[d["arch"] == a, "method"].unique(), key=_method_key):
            for metric in ("fpr95", "auroc"):
                if (a, m, MEAN, metric) in covered:
                    continue
                o, n, _ = ours(a, m, MEAN, metric)
                rows.append({"Source table": "—", "Architecture": ARCH_NAMES.get(a, a),
                             "Method": METHOD_NAMES.get(m, m), "OOD set": "Mean",
                             "Metric": METRIC_NAMES[metric], "Ours": o, "n": n, "Paper": "n/r",
                             "Δ (ours − paper)": "n/r", "Provenance": "—",
                             "Note": "not reported in accessible sources", "_k": (1, _arch_key(a))})
    t = pd.DataFrame(rows)
    t = t.sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    n_sets = int(d["n_ood_sets"].max())
    t.attrs["caption"] = (
        f"{suite}: our results next to the GReg paper's numbers (benchmark {bench}). Every paper number is "
        f"second-hand and shown as \"reported (unverified)\"; anchor rows come from other protocols. n/r = not "
        f"reported in accessible sources. Ours: {SCORE_NAMES.get(score, score)} score, higher score = "
        f"in-distribution; {convention_text(conv)}; mean ± std over seeds in % (ddof=1); Mean = unweighted mean "
        f"over our {n_sets} OOD sets. Δ = ours − paper in percentage points (our seed mean). Paper convention "
        f"assumed: ID positive, closest-recall rule.")
    if not conv.startswith("positive=id;fpr_rule=closest"):
        t.attrs["caption"] += " WARNING: our FPR95 convention differs from the paper's; FPR95 Δ is not comparable."
    return t


def _ablation_rows(df: pd.DataFrame, suite: str, score: str) -> pd.DataFrame:
    """Ablation experiments plus the main runs of the same (arch, method) (the main λ_∇S point)."""
    d = df[(df["suite"] == suite) & _score_mask(df, score)]
    ab = d[d["group"] == "ablation"]
    if ab.empty:
        raise ValueError(f"no ablation experiments (group 'ablation') for suite {suite!r}, score {score!r}")
    pairs = builtins.set(zip(ab["arch"], ab["method"]))
    in_pairs = np.array([(a, m) in pairs for a, m in zip(d["arch"], d["method"])], dtype=bool)
    main = d[(d["group"] == "main").to_numpy() & in_pairs]
    out = pd.concat([ab, main], ignore_index=True)
    dup = out[out.duplicated(["arch", "method", "lambda_grad", "seed", "ood_set"], keep=False)]
    if not dup.empty:
        raise ValueError(f"ablation: the same (arch, method, λ, seed) twice: {sorted(dup['experiment'].unique())}")
    return out


def ablation_table(df: pd.DataFrame, *, suite: str, score: str = "energy") -> pd.DataFrame:
    """λ_∇S ablation: rows (Architecture, Method, λ_∇S) from group "ablation" plus the main run of the same
    (arch, method), marked "(main)"; columns headline-set and mean FPR95/AUROC and ID accuracy, mean ± std."""
    d = _ablation_rows(df, suite, score)
    conv = _one_convention(d, f"ablation_table({suite})")
    head = _headline(d)
    shown = ([head] if head else []) + [MEAN]
    cols = [("", "n")]
    for s in shown:
        cols += [(_set_name(s) + (" (headline)" if s == head else ""), METRIC_NAMES[m]) for m in ("fpr95", "auroc")]
    cols.append(("", METRIC_NAMES["id_accuracy"]))
    rows, index, nseeds = [], [], []
    keyf = lambda kv: (_arch_key(kv[0][0]), _method_key(kv[0][1]), kv[0][2])  # noqa: E731
    for (arch, method, lam), g in sorted(d.groupby(["arch", "method", "lambda_grad"], dropna=False), key=keyf):
        n = g["seed"].nunique()
        nseeds.append(n)
        row = [str(n)]
        for s in shown:
            row += [_cell(g[g["ood_set"] == s], m) for m in ("fpr95", "auroc")]
        row.append(_cell(g[g["is_mean"]], "id_accuracy"))
        lab = f"{lam:g}" + (" (main)" if (g["group"] == "main").any() else "")
        rows.append(row)
        index.append((ARCH_NAMES.get(arch, arch), METHOD_NAMES.get(method, method), lab))
    t = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Architecture", "Method", "λ_∇S"]),
                     columns=pd.MultiIndex.from_tuples(cols))
    t.attrs["caption"] = _caption(suite, score, conv, int(d["n_ood_sets"].max()), nseeds,
                                  "Ablation of the gradient-regularisation weight λ_∇S; "
                                  "(main) = the main experiment's λ_∇S.")
    return t


def grad_ablation_table(df: pd.DataFrame, *, suite: str, score: str = "energy",
                        pairs: Sequence[tuple[str, str]] = (("oe", "oe_grad"), ("energy", "greg"))) -> pd.DataFrame:
    """The paper's "gradient term added to other losses" table: for each pair (without, with the gradient term)
    and architecture, both rows and a Δ row (with − without, points), from group "grad_ablation" plus "main"."""
    d = _select(df, suite, score, ["main", "grad_ablation"])
    conv = _one_convention(d, f"grad_ablation_table({suite})")
    head = _headline(d)
    shown = ([head] if head else []) + [MEAN]
    metrics = ("fpr95", "auroc")
    cols = [("", "n")]
    for s in shown:
        cols += [(_set_name(s) + (" (headline)" if s == head else ""), METRIC_NAMES[m]) for m in metrics]
    cols.append(("", METRIC_NAMES["id_accuracy"]))
    rows, index, nseeds = [], [], []
    for arch in sorted(d["arch"].unique(), key=_arch_key):
        da = d[d["arch"] == arch]
        for base, withg in pairs:
            gb, gw = da[da["method"] == base], da[da["method"] == withg]
            if gb.empty or gw.empty:
                continue
            for m, g in ((base, gb), (withg, gw)):
                lams = sorted(g["lambda_grad"].dropna().unique())
                n = g["seed"].nunique()
                nseeds.append(n)
                row = [str(n)]
                for s in shown:
                    row += [_cell(g[g["ood_set"] == s], k) for k in metrics]
                row.append(_cell(g[g["is_mean"]], "id_accuracy"))
                name = METHOD_NAMES.get(m, m)
                if m == withg and lams:
                    name += f" (λ_∇S = {', '.join(f'{x:g}' for x in lams)})"
                rows.append(row)
                index.append((ARCH_NAMES.get(arch, arch), name))
            row = [""]
            for s in shown:
                for k in metrics:
                    a = gw.loc[gw["ood_set"] == s, k].mean() * 100
                    b = gb.loc[gb["ood_set"] == s, k].mean() * 100
                    row.append(_signed(a - b))
            row.append(_signed((gw.loc[gw["is_mean"], "id_accuracy"].mean()
                                - gb.loc[gb["is_mean"], "id_accuracy"].mean()) * 100))
            rows.append(row)
            index.append((ARCH_NAMES.get(arch, arch),
                          f"Δ {METHOD_NAMES.get(withg, withg)} − {METHOD_NAMES.get(base, base)}"))
    if not rows:
        raise ValueError(f"grad_ablation_table: none of the pairs {list(pairs)} has both methods in suite {suite!r}")
    t = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Architecture", "Method"]),
                     columns=pd.MultiIndex.from_tuples(cols))
    t.attrs["caption"] = _caption(suite, score, conv, int(d["n_ood_sets"].max()), nseeds,
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
    d = _select(df, suite, score, ["main"])
    conv = _one_convention(d, f"paired_differences({suite})")
    if ood_set is None:
        ood_set = _headline(d) or MEAN
    d = d[d["ood_set"] == ood_set]
    if d.empty:
        raise ValueError(f"paired_differences: OOD set {ood_set!r} not in the results of suite {suite!r}")
    rows, index = [], []
    for arch in sorted(d["arch"].unique(), key=_arch_key):
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
                rows.append([_signed(a), _signed(b)])
                index.append((ARCH_NAMES.get(arch, arch), METHOD_NAMES.get(m, m), f"seed {s}"))
            wf = sum(x < 0 for x in dfpr)
            wa = sum(x > 0 for x in dauc)
            k = len(seeds)
            rows.append([f"{_pm_points(dfpr)} ({wf}/{k} wins)", f"{_pm_points(dauc)} ({wa}/{k} wins)"])
            index.append((ARCH_NAMES.get(arch, arch), METHOD_NAMES.get(m, m), "mean ± std"))
    if not rows:
        raise ValueError(f"paired_differences: no seed has both {baseline!r} and one of {list(methods)}")
    t = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Architecture", "Method", "Seed"]),
                     columns=["Δ FPR95 (pts) ↓", "Δ AUROC (pts) ↑"])
    t.attrs["caption"] = (
        f"{suite}: paired per-seed differences, method − {METHOD_NAMES.get(baseline, baseline)}, same architecture "
        f"and seed, on {_set_name(ood_set)}{' (mean over OOD sets)' if ood_set == MEAN else ''}; "
        f"{SCORE_NAMES.get(score, score)} score, higher score = in-distribution; {convention_text(conv)}. "
        f"Points; mean ± std over seeds (ddof=1); wins = seeds with lower FPR95 / higher AUROC than the baseline.")
    return t


def _pm_points(v: Sequence[float]) -> str:
    v = np.asarray(v, dtype=float)
    if v.size == 1:
        return f"{v[0]:+.2f}"
    return f"{v.mean():+.2f} ± {v.std(ddof=1):.2f}"


# ------------------------------------------------------------------------------------------------- writers
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "−": r"$-$", "–": r"--", "—": r"---",
                  "Δ": r"$\Delta$", "λ": r"$\lambda$", "∇": r"$\nabla$", "≥": r"$\geq$", "≤": r"$\leq$",
                  "↔": r"$\leftrightarrow$", "·": r"$\cdot$", "‖": r"$\|$", "×": r"$\times$", "…": r"\ldots{}",
                  "\"": "''"}


def latex_escape(s: object) -> str:
    """Escape text for LaTeX (text mode): the ten special characters plus the Unicode symbols the tables use."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(s))


def _flat_columns(t: pd.DataFrame) -> list[str]:
    if isinstance(t.columns, pd.MultiIndex):
        return [" ".join(str(x) for x in c if str(x)).strip() for c in t.columns]
    return [str(c) for c in t.columns]


def _index_frame(t: pd.DataFrame) -> pd.DataFrame:
    """The index as leading columns (an unnamed RangeIndex is dropped)."""
    if isinstance(t.index, pd.RangeIndex) and t.index.name is None:
        return pd.DataFrame(index=range(len(t)))
    names = [n if n is not None else "" for n in t.index.names]
    vals = [i if isinstance(i, tuple) else (i,) for i in t.index]
    return pd.DataFrame(vals, columns=names)


def _blank_repeats(col: list[str]) -> list[str]:
    out, prev = [], None
    for v in col:
        out.append("" if v == prev else v)
        prev = v
    return out


def table_to_markdown(t: pd.DataFrame) -> str:
    """Caption paragraph + GitHub-flavoured Markdown table (repeated leading index values blanked)."""
    idx = _index_frame(t)
    body = pd.DataFrame(t.to_numpy(), columns=_flat_columns(t))
    if len(idx.columns):
        idx[idx.columns[0]] = _blank_repeats(idx[idx.columns[0]].astype(str).tolist())
    flat = pd.concat([idx.reset_index(drop=True), body], axis=1)
    header = "| " + " | ".join(str(c).replace("|", "\\|") for c in flat.columns) + " |"
    sep = "|" + "|".join("---" for _ in flat.columns) + "|"
    lines = [header, sep] + ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |"
                             for r in flat.itertuples(index=False)]
    cap = t.attrs.get("caption", "")
    return (f"{cap}\n\n" if cap else "") + "\n".join(lines) + "\n"


def table_to_latex(t: pd.DataFrame, *, label: Optional[str] = None) -> str:
    """A ``table`` environment with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``). MultiIndex columns
    give a two-row header with ``\\multicolumn``; a ``\\midrule`` separates groups of the first index level.
    Every cell is escaped with :func:`latex_escape`."""
    idx = _index_frame(t)
    n_idx = len(idx.columns)
    out = [r"% generated by greg_ood.report; needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering"]
    cap = t.attrs.get("caption")
    if cap:
        out.append(r"\caption{" + latex_escape(cap) + "}")
    if label:
        out.append(r"\label{" + re.sub(r"[^A-Za-z0-9:_-]", "-", label) + "}")
    out.append(r"\begin{tabular}{" + "l" * n_idx + "c" * t.shape[1] + "}")
    out.append(r"\toprule")
    if isinstance(t.columns, pd.MultiIndex) and t.columns.nlevels == 2:
        top, spans = [], []
        for lab, _ in t.columns:
            if spans and spans[-1][0] == lab:
                spans[-1][1] += 1
            else:
                spans.append([lab, 1])
        top = [""] * n_idx
        rules, col = [], n_idx + 1
        for lab, k in spans:
            top.append(latex_escape(lab) if k == 1 else rf"\multicolumn{{{k}}}{{c}}{{{latex_escape(lab)}}}")
            if lab:
                rules.append(rf"\cmidrule(lr){{{col}-{col + k - 1}}}")
            col += k
        out.append(" & ".join(top) + r" \\")
        if rules:
            out.append(" ".join(rules))
        out.append(" & ".join([latex_escape(c) for c in idx.columns] +
                              [latex_escape(b) for _, b in t.columns]) + r" \\")
    else:
        out.append(" & ".join([latex_escape(c) for c in idx.columns] + [latex_escape(c) for c in _flat_columns(t)])
                   + r" \\")
    out.append(r"\midrule")
    first = idx[idx.columns[0]].astype(str).tolist() if n_idx else [""] * len(t)
    prev = None
    for i in range(len(t)):
        if n_idx and prev is not None and first[i] != prev:
            out.append(r"\midrule")
        lead = [] if not n_idx else [latex_escape(first[i]) if first[i] != prev else ""] + \
            [latex_escape(v) for v in idx.iloc[i, 1:]]
        out.append(" & ".join(lead + [latex_escape(v) for v in t.iloc[i]]) + r" \\")
        prev = first[i]
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def _table_to_csv(t: pd.DataFrame) -> str:
    idx = _index_frame(t).reset_index(drop=True)
    body = pd.DataFrame(t.to_numpy(), columns=_flat_columns(t))
    buf = io.StringIO()
    pd.concat([idx, body], axis=1).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def write_table(table: pd.DataFrame, out_dir: os.PathLike | str, stem: str) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.tex`` and ``<stem>.csv`` under ``out_dir`` (each atomically: temp + rename).
    Returns ``{"md": path, "tex": path, "csv": path}``."""
    out = Path(out_dir)
    return {"md": write_bytes_atomic(out / f"{stem}.md", table_to_markdown(table)),
            "tex": write_bytes_atomic(out / f"{stem}.tex", table_to_latex(table, label=f"tab:{stem}")),
            "csv": write_bytes_atomic(out / f"{stem}.csv", _table_to_csv(table))}


# ------------------------------------------------------------------------------------------------- figures
def _figure(nrows: int, ncols: int, *, w: float = 4.2, h: float = 3.4):
    from matplotlib.figure import Figure  # object-oriented API: no pyplot, no global backend switch
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    return fig, axes


def _save(fig, path: os.PathLike | str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return write_bytes_atomic(Path(path), buf.getvalue())


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = min(n, max_cols)
    return math.ceil(n / ncols), ncols


def _hide_unused(axes, n: int) -> None:
    for ax in axes[n:]:
        ax.set_visible(False)


def _conv_title(convention: Optional[str | Mapping]) -> str:
    if convention is None:
        return "score higher = ID; ID = positive class"
    c = convention if isinstance(convention, Mapping) else dict(kv.split("=", 1) for kv in convention.split(";"))
    pos = c.get("positive", "id")
    return f"score higher = ID; {pos.upper()} = positive class, FPR95 rule: {c.get('fpr_rule', '?')}"


def plot_roc(roc_json_files: Sequence[os.PathLike | str], path: os.PathLike | str, *,
             labels: Optional[Sequence[str]] = None, convention: Optional[str | Mapping] = None,
             title: str = "ROC curves (primary score)") -> Path:
    """ROC curves, one panel per OOD set, one line per roc.json (label default: the experiment directory name).
    Axes follow the file (ID positive by default: x = OOD accepted as ID, y = ID recall); a dotted line marks
    TPR = 0.95."""
    files = [Path(f) for f in roc_json_files]
    if not files:
        raise ValueError("plot_roc: no roc.json files")
    labels = list(labels) if labels is not None else [f.parent.name or f.stem for f in files]
    curves = []
    sets: list[str] = []
    for f in files:
        doc = json.loads(f.read_text())
        if not isinstance(doc, Mapping):
            raise ValueError(f"{f}: expected an object {{set: [{{fpr, tpr}}, ...]}}")
        c = {}
        for s, pts in doc.items():
            try:
                c[s] = (np.array([p["fpr"] for p in pts], float), np.array([p["tpr"] for p in pts], float))
            except (KeyError, TypeError) as e:
                raise ValueError(f"{f}: set {s!r} needs a list of {{'fpr', 'tpr'}} points ({e})") from e
            if s not in sets:
                sets.append(s)
        curves.append(c)
    pos = "ID" if convention is None or "positive=ood" not in str(convention) else "OOD"
    neg = "OOD" if pos == "ID" else "ID"
    fig, axes = _figure(*_grid(len(sets)))
    for ax, s in zip(axes, sets):
        for lab, c in zip(labels, curves):
            if s in c:
                fpr, tpr = c[s]
                o = np.argsort(fpr, kind="stable")
                ax.plot(fpr[o], tpr[o], lw=1.4, label=lab)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.axhline(0.95, color="0.5", lw=0.8, ls=":")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), title=_set_name(s),
               xlabel=f"FPR ({neg} accepted as {pos})", ylabel=f"TPR ({pos} recall)")
        ax.legend(fontsize=7, loc="lower right")
    _hide_unused(axes, len(sets))
    fig.suptitle(f"{title} — {_conv_title(convention)}; dotted: TPR 0.95", fontsize=10)
    return _save(fig, path)


def plot_score_histograms(npz_file: os.PathLike | str, path: os.PathLike | str, score: str = "energy", *,
                          title: Optional[str] = None) -> Path:
    """Histograms of ``<score>/id`` against every ``<score>/<set>`` in a scores npz (one panel per OOD set;
    shared, data-driven bin edges; densities)."""
    f = Path(npz_file)
    with np.load(f) as z:
        keys = [k for k in z.files if k.startswith(f"{score}/")]
        if f"{score}/id" not in keys:
            raise ValueError(f"{f}: no '{score}/id' array (have {sorted(z.files)[:8]})")
        arrs = {k.split("/", 1)[1]: np.asarray(z[k], dtype=float).ravel() for k in keys}
    idv = arrs.pop("id")
    idv = idv[np.isfinite(idv)]
    if not arrs:
        raise ValueError(f"{f}: no OOD sets for score {score!r}")
    fig, axes = _figure(*_grid(len(arrs)))
    for ax, (s, v) in zip(axes, arrs.items()):
        v = v[np.isfinite(v)]
        both = np.concatenate([idv, v])
        edges = np.histogram_bin_edges(both, bins="auto") if both.size and np.ptp(both) > 0 else 10
        if not np.isscalar(edges) and len(edges) > 101:
            edges = np.linspace(both.min(), both.max(), 101)
        ax.hist(idv, bins=edges, density=True, alpha=0.55, label=f"ID test (n={idv.size})")
        ax.hist(v, bins=edges, density=True, alpha=0.55, label=f"{_set_name(s)} (n={v.size})")
        ax.set(title=f"ID vs {_set_name(s)}", xlabel=f"{SCORE_NAMES.get(score, score)} score (higher = ID)",
               ylabel="density")
        ax.legend(fontsize=7)
    _hide_unused(axes, len(arrs))
    fig.suptitle(title or f"{f.stem}: {SCORE_NAMES.get(score, score)} score distributions (higher = ID)",
                 fontsize=10)
    return _save(fig, path)


_TRAIN_PANELS = (("total", "total loss"), ("ce", "cross-entropy"), ("energy", "energy-margin loss"),
                 ("grad", "gradient penalty (GReg term)"),
                 ("gradnorm_id", r"input-gradient norm $\|\nabla_x E\|_2$, ID"),
                 ("gradnorm_aux", r"input-gradient norm $\|\nabla_x E\|_2$, auxiliary"))


def _experiment_of(train_csv: Path) -> str:
    name = train_csv.name
    for suf in (".train.csv", ".csv"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return train_csv.stem


def _method_of(experiment: str) -> Optional[str]:
    parts = experiment.split("-")
    return parts[1] if len(parts) > 1 and parts[1] in METHOD_ORDER else None


def plot_training_curves(train_csv_files: Sequence[os.PathLike | str], path: os.PathLike | str, *,
                         labels: Optional[Sequence[str]] = None, title: str = "Training curves") -> Path:
    """Loss terms and the input-gradient norms (the paper's Figure 3: ‖∇E‖ grows without GReg) over steps.
    One colour per method (parsed from ``<suite>-<method>-<arch>-s<seed>`` names) or per label; seeds share it."""
    files = [Path(f) for f in train_csv_files]
    if not files:
        raise ValueError("plot_training_curves: no train csv files")
    exps = [_experiment_of(f) for f in files]
    groups = list(labels) if labels is not None else [METHOD_NAMES.get(_method_of(e) or "", e) for e in exps]
    frames = []
    for f in files:
        t = pd.read_csv(f)
        if "step" not in t.columns:
            raise ValueError(f"{f}: missing column 'step'")
        frames.append(t)
    panels = [(c, lab) for c, lab in _TRAIN_PANELS if any(c in t.columns and t[c].notna().any() for t in frames)]
    if not panels:
        raise ValueError(f"plot_training_curves: none of {[c for c, _ in _TRAIN_PANELS]} has values")
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    order = list(dict.fromkeys(groups))
    colors = {g: cmap(i % 10) for i, g in enumerate(order)}
    fig, axes = _figure(*_grid(len(panels)))
    for ax, (c, lab) in zip(axes, panels):
        seen = builtins.set()
        vals = []
        for t, g in zip(frames, groups):
            if c not in t.columns:
                continue
            s = t[["step", c]].apply(pd.to_numeric, errors="coerce").dropna()
            if s.empty:
                continue
            ax.plot(s["step"], s[c], color=colors[g], lw=1.1, alpha=0.85, label=None if g in seen else g)
            seen.add(g)
            vals.append(s[c].to_numpy())
        if c.startswith("gradnorm") and vals:
            v = np.concatenate(vals)
            v = v[v > 0]
            if v.size and v.max() / v.min() > 100:
                ax.set_yscale("log")
        ax.set(title=lab, xlabel="step")
        ax.legend(fontsize=7)
    _hide_unused(axes, len(panels))
    fig.suptitle(f"{title} (gradient norms w.r.t. the normalised input; E = energy, low = ID)", fontsize=10)
    return _save(fig, path)


def plot_ablation(df: pd.DataFrame, path: os.PathLike | str, *, suite: Optional[str] = None,
                  score: str = "energy") -> Path:
    """FPR95 and AUROC (%) against λ_∇S, mean ± std over seeds as error bars, for the mean over OOD sets and the
    headline set. Symlog x axis, so λ = 0 is drawn (linear below the smallest positive λ)."""
    if suite is None:
        suites = df.loc[df["group"] == "ablation", "suite"].unique()
        if len(suites) != 1:
            raise ValueError(f"plot_ablation: pass suite= (ablation results for {sorted(suites)})")
        suite = suites[0]
    d = _ablation_rows(df, suite, score)
    conv = _one_convention(d, f"plot_ablation({suite})")
    head = _headline(d)
    sets = ([head] if head else []) + [MEAN]
    fig, axes = _figure(1, 2, w=4.8)
    lams_all = d["lambda_grad"].dropna()
    pos = lams_all[lams_all > 0]
    for ax, metric in zip(axes, ("fpr95", "auroc")):
        for (arch, method), g in d.groupby(["arch", "method"]):
            for s in sets:
                gs = g[g["ood_set"] == s].groupby("lambda_grad")[metric]
                stats = pd.DataFrame({"m": gs.mean() * 100, "s": gs.std(ddof=1).fillna(0) * 100}).sort_index()
                lab = f"{ARCH_NAMES.get(arch, arch)} {METHOD_NAMES.get(method, method)}, {_set_name(s)}"
                ax.errorbar(stats.index, stats["m"], yerr=stats["s"], marker="o", capsize=3, label=lab)
        if len(pos):
            ax.set_xscale("symlog", linthresh=float(pos.min()))
        ax.set(xlabel=r"$\lambda_{\nabla S}$ (symlog axis; 0 = no gradient term)",
               ylabel=f"{METRIC_NAMES[metric]} (%)", title=METRIC_NAMES[metric])
        ax.legend(fontsize=7)
    c = dict(kv.split("=", 1) for kv in conv.split(";"))
    fig.suptitle(f"{suite}: λ_∇S ablation — {SCORE_NAMES.get(score, score)} score, higher = ID; "
                 f"{c['positive'].upper()} positive, {c['fpr_rule']} rule; error bars: std over seeds", fontsize=9)
    return _save(fig, path)


def _image_grid(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        return a  # already one image (H×W or H×W×C)
    if a.ndim == 3:
        a = a[..., None]  # N×H×W gray
    if a.ndim != 4:
        raise ValueError(f"plot_selection: images must be N×H×W[×C] or one H×W[×C] grid, got shape {a.shape}")
    n, h, w, c = a.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, dtype=a.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = a[i]
    return grid


def plot_selection(energy_all, energy_kept, cluster_sizes, images_grid_uint8, path: os.PathLike | str, *,
                   title: str = "GReg+ energy-based sampling") -> Path:
    """Three panels: energy histogram of all auxiliary samples vs the kept ones (shared bins), the cluster sizes
    (bar chart), and an image grid of kept samples (an N×H×W[×C] uint8 batch, or a ready H×W[×C] grid)."""
    ea = np.asarray(energy_all, float).ravel()
    ek = np.asarray(energy_kept, float).ravel()
    ea, ek = ea[np.isfinite(ea)], ek[np.isfinite(ek)]
    sizes = np.asarray(cluster_sizes).ravel()
    grid = _image_grid(images_grid_uint8)
    fig, axes = _figure(1, 3, w=4.4)
    both = np.concatenate([ea, ek])
    edges = np.histogram_bin_edges(both, bins="auto") if both.size and np.ptp(both) > 0 else 10
    if not np.isscalar(edges) and len(edges) > 101:
        edges = np.linspace(both.min(), both.max(), 101)
    axes[0].hist(ea, bins=edges, alpha=0.5, label=f"all auxiliary (n={ea.size})")
    axes[0].hist(ek, bins=edges, alpha=0.7, label=f"kept (n={ek.size})")
    axes[0].set(title="energy of auxiliary samples", xlabel="energy E (low = ID-like)", ylabel="count")
    axes[0].legend(fontsize=7)
    axes[1].bar(np.arange(sizes.size), sizes, color="tab:green")
    axes[1].set(title=f"cluster sizes (k = {sizes.size})", xlabel="cluster", ylabel="samples")
    from matplotlib.ticker import MaxNLocator
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if grid.ndim == 3 and grid.shape[-1] == 1:
        grid = grid[..., 0]
    axes[2].imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    axes[2].set(title="kept samples")
    axes[2].axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_certify(grad_norms: Mapping[str, np.ndarray], radii: Mapping[str, np.ndarray], path: os.PathLike | str, *,
                 title: str = "Input-gradient norms and first-order radii") -> Path:
    """Left: distribution of ‖∇ₓE‖₂ per set (log x). Right: fraction of samples with estimated radius ≥ r per set,
    r = (γ − E(x)) / ‖∇ₓE(x)‖₂ — a first-order estimate, not a certificate."""
    fig, axes = _figure(1, 2, w=4.8)
    for s, g in grad_norms.items():
        g = np.asarray(g, float).ravel()
        g = np.sort(g[np.isfinite(g) & (g > 0)])
        if g.size:
            axes[0].plot(g, np.arange(1, g.size + 1) / g.size, label=f"{_set_name(s)} (median {np.median(g):.3g})")
    axes[0].set_xscale("log")
    axes[0].set(title=r"CDF of $\|\nabla_x E(x)\|_2$", xlabel=r"$\|\nabla_x E\|_2$ (normalised input, log)",
                ylabel="fraction of samples ≤ x")
    axes[0].legend(fontsize=7)
    for s, r in radii.items():
        r = np.asarray(r, float).ravel()
        r = np.sort(r[np.isfinite(r)])
        if r.size:
            axes[1].plot(r, 1 - np.arange(r.size) / r.size, label=_set_name(s))
    axes[1].set(title="estimated radius (γ − E)/‖∇E‖", xlabel="radius r (L2, normalised input)",
                ylabel="fraction of samples with radius ≥ r")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{title} — first-order estimate, not a certificate", fontsize=10)
    return _save(fig, path)


# -------------------------------------------------------------------------------------------- suite report
_MANIFEST = ".report-files.json"


def build_suite_report(*, suite: str, metrics_files: Iterable[os.PathLike | str],
                       paper_csv: Optional[os.PathLike | str], out_dir: os.PathLike | str,
                       scores_dir: Optional[os.PathLike | str] = None, plots_dir: Optional[os.PathLike | str] = None,
                       train_csv_files: Iterable[os.PathLike | str] = (),
                       certify_files: Iterable[os.PathLike | str] = ()) -> dict[str, Path]:
    """Write every table and figure of one suite under ``out_dir``, plus ``summary.md``.

    * ``main`` (primary score) and ``main_<score>`` for every other score in the files; ``results_long.csv``
      (every per-seed value, fractions).
    * ``paper_comparison`` when ``paper_csv`` has numbers for the suite's benchmark.
    * ``ablation`` (+ ``figures/ablation.png``) when group "ablation" experiments exist; ``grad_ablation`` when a
      (without, with gradient term) pair of methods exists.
    * ``paired_differences`` when the baseline ``energy`` and GReg/GReg+ share seeds.
    * figures: ``roc_<arch>.png`` (from ``plots_dir/<experiment>/roc.json``, lowest seed per method),
      ``scores_<experiment>.png`` (from ``scores_dir/<experiment>.npz``, lowest seed per method and arch),
      ``training_curves_<arch>.png``, ``certify_<experiment>.png``.

    Every file is written to a temp file and renamed into place, so a killed run leaves complete old or new files;
    files that an earlier run listed in ``out_dir/.report-files.json`` and this run did not write are removed.
    Returns ``{name: path}`` of everything written.
    """
    out = Path(out_dir)
    df_all = load_results(list(metrics_files))
    df = df_all[df_all["suite"] == suite]
    if df.empty:
        raise ValueError(f"build_suite_report: none of the metrics files is for suite {suite!r} "
                         f"(found {sorted(df_all['suite'].unique())})")
    written: dict[str, Path] = {}
    notes: list[str] = []
    primaries = sorted(df["primary_score"].unique())
    # one detection score for all rows, or each method's own (DOS detects with its absent-class output)
    primary = primaries[0] if len(primaries) == 1 else "primary"
    conv = _one_convention(df, f"build_suite_report({suite})")

    def table(name: str, t: pd.DataFrame) -> None:
        for k, p in write_table(t, out, name).items():
            written[f"{name}.{k}"] = p

    long = df.drop(columns=["source"]).sort_values(["group", "arch", "method", "lambda_grad", "seed", "score",
                                                    "ood_set"], kind="stable")
    written["results_long.csv"] = write_bytes_atomic(out / "results_long.csv", long.to_csv(index=False,
                                                                                      lineterminator="\n"))
    has_main = (df["group"] == "main").any()
    if has_main:
        table("main", main_table(df, suite=suite, score=primary))
        for s in sorted(builtins.set(df["score"]) - {primary}):
            table(f"main_{s}", main_table(df, suite=suite, score=s))
    else:
        notes.append("No main-group experiments: main table skipped.")
    if paper_csv is not None and has_main and SUITE_BENCHMARK.get(suite):
        try:
            table("paper_comparison", paper_comparison(df, paper_csv, suite=suite, score=primary))
        except ValueError as e:
            notes.append(f"Paper comparison skipped: {e}")
    if (df["group"] == "ablation").any():
        table("ablation", ablation_table(df, suite=suite, score=primary))
        written["figures/ablation.png"] = plot_ablation(df, out / "figures" / "ablation.png", suite=suite,
                                                        score=primary)
    if has_main:
        try:
            table("grad_ablation", grad_ablation_table(df, suite=suite, score=primary))
        except ValueError as e:
            notes.append(f"Gradient-term table skipped: {e}")
        try:
            table("paired_differences", paired_differences(df, suite=suite, score=primary))
        except ValueError as e:
            notes.append(f"Paired differences skipped: {e}")

    # figures from side files: one representative (lowest) seed per (arch, method) of the main group
    mains = df[(df["group"] == "main") & df["is_mean"] & _score_mask(df, primary)]
    reps = mains.sort_values("seed").groupby(["arch", "method"], as_index=False).first()
    reps = reps.iloc[sorted(range(len(reps)), key=lambda i: (_arch_key(reps["arch"].iloc[i]),
                                                             _method_key(reps["method"].iloc[i])))]
    if plots_dir is not None:
        pdir = Path(plots_dir)
        for arch, g in reps.groupby("arch", sort=False):
            files, labs = [], []
            for _, r in g.iterrows():
                cands = [pdir / r["experiment"] / "roc.json", pdir / suite / r["experiment"] / "roc.json"]
                f = next((c for c in cands if c.is_file()), None)
                if f is None:
                    notes.append(f"No ROC points for {r['experiment']} under {pdir}.")
                    continue
                files.append(f)
                labs.append(f"{METHOD_NAMES.get(r['method'], r['method'])} (seed {r['seed']})")
            if files:
                key = f"figures/roc_{arch}.png"
                written[key] = plot_roc(files, out / key, labels=labs, convention=conv,
                                        title=f"{suite} {ARCH_NAMES.get(arch, arch)}: ROC, {primary} score")
    if scores_dir is not None:
        sdir = Path(scores_dir)
        for _, r in reps.iterrows():
            f = next((c for c in (sdir / f"{r['experiment']}.npz", sdir / suite / f"{r['experiment']}.npz")
                      if c.is_file()), None)
            if f is None:
                notes.append(f"No score arrays for {r['experiment']} under {sdir}.")
                continue
            key = f"figures/scores_{r['experiment']}.png"
            written[key] = plot_score_histograms(f, out / key, score=r["primary_score"])
    train_files = [Path(f) for f in train_csv_files]
    if train_files:
        arch_of = dict(zip(df["experiment"], df["arch"]))
        by_arch: dict[str, list[Path]] = {}
        for f in train_files:
            by_arch.setdefault(arch_of.get(_experiment_of(f), "other"), []).append(f)
        for arch, fs in sorted(by_arch.items(), key=lambda kv: _arch_key(kv[0])):
            fs = sorted(fs, key=lambda f: (_method_key(_method_of(_experiment_of(f)) or "~"), f.name))
            key = f"figures/training_curves_{arch}.png"
            written[key] = plot_training_curves(fs, out / key,
                                                title=f"{suite} {ARCH_NAMES.get(arch, arch)}: training curves")
    for f in certify_files:
        f = Path(f)
        try:
            g, r = load_certify(f)
        except (ValueError, OSError) as e:
            notes.append(f"Certify file skipped: {e}")
            continue
        key = f"figures/certify_{f.stem}.png"
        written[key] = plot_certify(g, r, out / key, title=f"{f.stem}: input-gradient norms and radii")

    written["summary.md"] = write_bytes_atomic(out / "summary.md", _summary(suite, df, primary, conv, written, notes, out))
    _cleanup_stale(out, written)
    return written


def _summary(suite: str, df: pd.DataFrame, primary: str, conv: str, written: Mapping[str, Path],
             notes: Sequence[str], out: Path) -> str:
    exps = df.drop_duplicates("experiment")
    lines = [f"# Report: suite `{suite}`", "",
             "## Conventions",
             f"* Detection score for the headline tables: {SCORE_NAMES.get(primary, primary)}; higher score = "
             f"in-distribution.",
             f"* {convention_text(conv)}.",
             "* AUROC does not depend on which class is positive. Values are percentages; mean ± std over seeds "
             "(std with ddof=1; a single seed shows no ±). Mean = unweighted mean over the OOD sets.",
             "* Paper numbers are second-hand (see `reports/paper/README.md`) and shown as \"reported "
             "(unverified)\"; anchor rows come from other protocols; n/r = not reported in accessible sources.",
             "",
             "## Experiments",
             f"* {len(exps)} experiments: " + ", ".join(
                 f"{g} {n}" for g, n in exps["group"].value_counts().sort_index().items()) + ".",
             f"* Architectures: {', '.join(ARCH_NAMES.get(a, a) for a in sorted(exps['arch'].unique(), key=_arch_key))}"
             f"; methods: {', '.join(METHOD_NAMES.get(m, m) for m in sorted(exps['method'].unique(), key=_method_key))}"
             f"; seeds: {', '.join(str(s) for s in sorted(exps['seed'].unique()))}.",
             f"* OOD sets: {', '.join(_set_name(s) for s in _ood_sets(df))}"
             + (f"; headline set: {_set_name(_headline(df))}." if _headline(df) else "."),
             "", "## Tables"]
    for k in sorted(written):
        if k.endswith(".md") and "/" not in k:
            stem = k[:-3]
            lines.append(f"* [{stem}]({stem}.md) ([LaTeX]({stem}.tex), [CSV]({stem}.csv))")
    lines.append("* [results_long.csv](results_long.csv): every per-seed value (fractions)")
    figs = sorted(k for k in written if k.startswith("figures/"))
    lines += ["", "## Figures"] + ([f"* [{Path(k).stem}]({k})" for k in figs] or ["* none"])
    if "main.md" in written:
        lines += ["", "## Main table", "", Path(written["main.md"]).read_text().rstrip()]
    if notes:
        lines += ["", "## Notes"] + [f"* {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _cleanup_stale(out: Path, written: Mapping[str, Path]) -> None:
    mf = out / _MANIFEST
    rel = sorted(str(Path(p).resolve().relative_to(out.resolve())) for p in written.values())
    try:
        old = json.loads(mf.read_text()) if mf.is_file() else []
    except (json.JSONDecodeError, OSError):
        old = []
    for r in builtins.set(old) - builtins.set(rel):
        p = out / r
        if p.is_file() and ".." not in Path(r).parts:
            p.unlink()
    remove_stale_temps(out, recursive=True)  # temporaries of a killed earlier run
    write_bytes_atomic(mf, json.dumps(rel, indent=1) + "\n")
