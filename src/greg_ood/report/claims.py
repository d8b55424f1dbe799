"""The claims table: each claim of the GReg paper tested on this suite's paired runs, with a computed verdict.

One row per claim (and architecture, and set or measure): the paper's statement in short and its number where
``reports/paper/paper_numbers.csv`` has one, the per-seed paired differences (same architecture and seed; the seed
fixes the pretrained model, the ID batches and the auxiliary batches), their mean, a 95 % t interval, a bootstrap
95 % interval as a cross-check, wins / pairs, n, and the verdict of :func:`greg_ood.report.stats.verdict` applied to
the t interval. Nothing in the table is written by hand: a verdict changes only when the numbers do.

Claims: C1 GReg vs Energy FPR95; C2 the gradient term added to another loss (``grad_ablation.pairs``); C3 the ID
input-gradient norm ‖∇ₓE‖ (the paper's Figure 3) at the end of training and averaged along it; C4 GReg+ vs GReg
FPR95; C5 ID accuracy kept within 1 point of Energy (non-inferiority); C6 certified radii (the certify stage).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ..run.io import write_bytes_atomic
from .aggregate import (convention_text, headline_set, kinds_text, mean_label, natural_split, one_convention, ood_sets,
                        select_rows, with_natural_mean)
from .loading import load_certify, load_paper_numbers, load_train_curves
from .names import MEAN, NATURAL_MEAN, arch_key, arch_name, method_name, score_name
from .paper import paper_pair_text
from .stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_interval, t_interval, verdict, wins
from .writers import table_to_latex, table_to_markdown

LEVEL = 0.95
#: non-inferiority margin of C5, in accuracy points
ACCURACY_MARGIN = -1.0


@dataclass(frozen=True)
class Claim:
    """One testable statement: ``other`` − ``base`` on ``measure`` is claimed to lie on side ``direction`` of
    ``threshold``. ``paper_metric`` names the paper_numbers.csv metric to quote (None: the paper gives no number)."""
    cid: str
    statement: str
    base: str
    other: str
    measure: str
    where: str
    direction: int
    threshold: float = 0.0
    paper_metric: Optional[str] = None


def suite_claims(head: Optional[str], grad_pairs: Sequence[tuple[str, str]], split: bool = False) -> list[Claim]:
    """The claims C1–C6 for a suite with headline set ``head`` (None: no headline rows) and the (without, with
    gradient term) pairs of its gradient ablation (C2 takes every pair other than Energy → GReg, which is C1);
    ``split``: the FPR95 claims are tested on the natural-image mean as well as on the all-set mean."""
    sets = ([head] if head else []) + ([NATURAL_MEAN] if split else []) + [MEAN]
    out = [Claim("C1", "GReg fine-tuning lowers FPR95 vs Energy fine-tuning", "energy", "greg", "fpr95", s, -1,
                 paper_metric="fpr95") for s in sets]
    for base, withg in grad_pairs:
        if (base, withg) == ("energy", "greg"):
            continue
        out += [Claim("C2", f"Adding the gradient term to {method_name(base)} lowers FPR95", base, withg, "fpr95",
                      s, -1, paper_metric="fpr95") for s in sets]
    out += [Claim("C3", "GReg keeps ‖∇ₓE‖ on ID data lower than Energy (Fig. 3)", "energy", "greg", m,
                  "id_train", -1) for m in ("gradnorm_end", "gradnorm_curve")]
    out += [Claim("C4", "Energy-based sampling (GReg+) lowers FPR95 vs GReg", "greg", "greg_plus", "fpr95", s, -1,
                  paper_metric="fpr95") for s in sets]
    out.append(Claim("C5", "GReg keeps ID accuracy within 1 point of Energy", "energy", "greg", "id_accuracy", "id",
                     +1, ACCURACY_MARGIN))
    out += [Claim("C6", "GReg gives larger certified radii than Energy", "energy", "greg", "radius", s, +1)
            for s in ["id"] + ([head] if head else [])]
    return out


_MEASURES = {  # measure -> (what is compared, unit, decimals printed)
    "fpr95": ("FPR95", "points", 2), "id_accuracy": ("ID accuracy", "points", 2),
    "gradnorm_end": ("‖∇ₓE‖ at the last logged step", "norm", 3),
    "gradnorm_curve": ("‖∇ₓE‖ averaged over the logged steps", "norm", 3),
    "radius": ("mean first-order radius", "L2 radius", 3),
}


def claim_row(claim: Claim, arch: str, diffs: Mapping[object, float], *, unit_name: str = "seed",
              note: str = "", paper_number: str = "", split: bool = False) -> dict:
    """The statistics of one claim from its paired differences ``{unit: other − base}`` (NaN pairs are dropped and
    counted in the note): mean, t interval, bootstrap interval, wins, n and the verdict of the t interval."""
    kept = {k: float(v) for k, v in diffs.items() if not math.isnan(float(v))}
    dropped = len(diffs) - len(kept)
    d = np.array(list(kept.values()), dtype=float)
    mean, lo, hi = t_interval(d, LEVEL)
    blo, bhi = bootstrap_interval(d, LEVEL)
    notes = [n for n in (note,
                         f"{dropped} {unit_name}(s) dropped: missing value" if dropped else "",
                         f"n = {len(d)} < 2: no interval" if len(d) < 2 else "") if n]
    what, unit, digits = _MEASURES[claim.measure]
    return {"claim": claim.cid, "statement": claim.statement, "paper": paper_number or "no number",
            "arch": arch_name(arch), "comparison": f"{method_name(claim.other)} − {method_name(claim.base)}",
            "measure": what, "set": mean_label(claim.where, split), "unit": unit, "pairs": unit_name,
            "direction": "lower" if claim.direction < 0 else "higher", "threshold": claim.threshold,
            "digits": digits, "per_pair": ";".join(f"{k}={v:.6g}" for k, v in kept.items()) if len(kept) <= 10
            else "", "n": len(d), "mean": mean, "t_low": lo, "t_high": hi,
            "boot_low": blo, "boot_high": bhi, "wins": wins(d, claim.direction, claim.threshold),
            "verdict": verdict(lo, hi, claim.direction, claim.threshold), "note": "; ".join(notes)}


def _by_seed(values: Mapping[tuple[str, str, int], float], arch: str, base: str, other: str) -> dict[str, float]:
    """Paired differences other − base per seed present for both (key ``s<seed>``)."""
    seeds = sorted({s for (a, m, s) in values if a == arch and m == base} &
                   {s for (a, m, s) in values if a == arch and m == other})
    return {f"s{s}": values[(arch, other, s)] - values[(arch, base, s)] for s in seeds}


def _detection_values(d: pd.DataFrame, measure: str, where: str) -> dict:
    """(arch, method, seed) -> value in points, from the main-group rows of one set (ID accuracy: the mean rows)."""
    rows = d[d["is_mean"]] if measure == "id_accuracy" else d[d["ood_set"] == where]
    return {(a, m, int(s)): float(v) * 100 for a, m, s, v in zip(rows["arch"], rows["method"], rows["seed"],
                                                                  rows[measure])}


def _gradnorm_values(curves: pd.DataFrame, measure: str) -> dict:
    """(arch, method, seed) -> ‖∇ₓE‖ on ID rows (``monitor_gradnorm_id``): the last logged value, or the mean over
    the logged steps (the steps are the same for every method of a suite: the same schedule)."""
    out = {}
    if "monitor_gradnorm_id" not in curves.columns:
        return out
    for (a, m, s), g in curves[curves["group"] == "main"].groupby(["arch", "method", "seed"]):
        v = g.dropna(subset=["monitor_gradnorm_id"]).sort_values("step")["monitor_gradnorm_id"]
        if len(v):
            out[(a, m, int(s))] = float(v.iloc[-1] if measure == "gradnorm_end" else v.mean())
    return out


def _radius_values(df: pd.DataFrame, certify_files: Sequence[Path]) -> dict:
    """(arch, method, seed) -> {set: radii array} for each certify file whose stem is a main experiment."""
    info = df[df["group"] == "main"].drop_duplicates("experiment").set_index("experiment")
    out = {}
    for f in certify_files:
        if f.stem in info.index:
            r = info.loc[f.stem]
            out[(r["arch"], r["method"], int(r["seed"]))] = load_certify(f)[1]
    return out


def _radius_rows(claim: Claim, arch: str, radii: Mapping, paper: str) -> list[dict]:
    """C6: per-seed pairs of the mean radius; when fewer than 2 seeds pair, also the per-image pairs of the lowest
    paired seed (the certify stage scores the same images with every model)."""
    def mean_r(k):
        r = np.asarray(radii[k].get(claim.where, []), float)
        r = r[np.isfinite(r)]
        return float(r.mean()) if r.size else math.nan
    per_seed = _by_seed({k: mean_r(k) for k in radii}, arch, claim.base, claim.other)
    note = "" if radii else "no certify results for this suite"
    rows = [claim_row(claim, arch, per_seed, note=note or "radii capped at the certify stage's ε",
                      paper_number=paper)]
    if 1 <= len(per_seed) < 2:
        s = int(next(iter(per_seed))[1:])
        a = np.asarray(radii[(arch, claim.base, s)].get(claim.where, []), float)
        b = np.asarray(radii[(arch, claim.other, s)].get(claim.where, []), float)
        if a.size and a.size == b.size:
            ok = np.isfinite(a) & np.isfinite(b)
            rows.append(claim_row(claim, arch, dict(enumerate(b[ok] - a[ok])), unit_name="image",
                                  note=f"certify covers seed {s} only: pairs are the same test images scored by "
                                       f"both models of seed {s}; the interval reflects image sampling, not "
                                       f"training randomness", paper_number=paper))
    return rows


def claims_table(df: pd.DataFrame, *, suite: str, score: str, grad_pairs: Sequence[tuple[str, str]],
                 train_csv_files: Sequence[Path] = (), certify_files: Sequence[Path] = (),
                 paper_csv: Optional[os.PathLike | str] = None,
                 natural: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Every claim of :func:`suite_claims` for every architecture of the main group: one row each (C6 may add a
    per-image row), numbers unrounded. ``attrs["caption"]`` states the conventions. ``natural`` names the
    natural-image OOD sets: when the suite has other (synthetic-noise) sets too, each FPR95 claim is tested on the
    natural-image mean (the paper's kind; the paper's number is quoted there) and on the all-set mean."""
    d = select_rows(df, suite, score, ["main"])
    conv = one_convention(d, f"claims_table({suite})")
    nat = natural_split(d, natural)
    others = [s for s in ood_sets(d) if s not in nat]
    d = with_natural_mean(d, nat)
    paper_mean = NATURAL_MEAN if nat else MEAN
    paper = load_paper_numbers(paper_csv) if paper_csv is not None else None
    curves = load_train_curves(train_csv_files, df)
    radii = _radius_values(df, [Path(f) for f in certify_files])
    values: dict[str, Callable[[Claim], dict]] = {
        "fpr95": lambda c: _detection_values(d, "fpr95", c.where),
        "id_accuracy": lambda c: _detection_values(d, "id_accuracy", c.where),
        "gradnorm_end": lambda c: _gradnorm_values(curves, "gradnorm_end"),
        "gradnorm_curve": lambda c: _gradnorm_values(curves, "gradnorm_curve")}
    rows = []
    for arch in sorted(d["arch"].unique(), key=arch_key):
        for c in suite_claims(headline_set(d), grad_pairs, split=bool(nat)):
            number = ""
            if paper is not None and c.paper_metric and c.where == paper_mean:
                number = paper_pair_text(paper, c.base, c.other, c.paper_metric)
            if c.measure == "radius":
                rows += _radius_rows(c, arch, radii, number)
                continue
            v = values[c.measure](c)
            note = "" if v else "no values (training logs without the ‖∇ₓE‖ monitor)"
            pairs = _by_seed(v, arch, c.base, c.other)
            if v and not pairs:
                note = f"no seed has both {method_name(c.base)} and {method_name(c.other)}"
            rows.append(claim_row(c, arch, pairs, note=note, paper_number=number, split=bool(nat)))
    t = pd.DataFrame(rows)
    t.attrs["caption"] = _caption(suite, score, conv) + (" " + kinds_text(nat, others) if nat else "")
    t.attrs["kinds"] = kinds_text(nat, others) if nat else ""
    return t


def _caption(suite: str, score: str, conv: str) -> str:
    return (f"{suite}: the paper's claims tested on paired runs. Each row compares two methods on the same "
            f"architecture and seed (same pretrained model, same ID and auxiliary batches); Δ = the second method "
            f"minus the first, per seed, in the row's unit (FPR95 and accuracy in percentage points, ‖∇ₓE‖ in its "
            f"own units, radii in L2 units of the normalised input). Mean Δ with a 95 % t interval (t quantile with "
            f"n − 1 degrees of freedom, std with ddof = 1) and a 95 % percentile bootstrap interval "
            f"({BOOTSTRAP_RESAMPLES:,} resamples, numpy default_rng seed {BOOTSTRAP_SEED}) as a cross-check; wins = "
            f"pairs on the claimed side. The verdict is computed from the t interval, never written by hand: "
            f"supported = the interval lies entirely on the claimed side of the threshold (0; C5: the "
            f"non-inferiority margin {ACCURACY_MARGIN:g} point), contradicted = entirely on the other side, "
            f"inconclusive = it contains the threshold, or n < 2, or a value is missing. Detection: "
            f"{score_name(score)} score, higher = ID; {convention_text(conv)}. ‖∇ₓE‖ (C3): the training log's "
            f"monitor, the mean over each logged step's ID batch (the same batches for both methods of a seed). "
            f"Paper numbers are second-hand (reported, unverified) and come from the paper's benchmarks (Δ = "
            f"second − first); they are quoted, not tested.")


def format_claims(t: pd.DataFrame) -> pd.DataFrame:
    """The claims rows as printed strings (Markdown / LaTeX)."""
    rows = []
    for r in t.to_dict("records"):
        def num(x: float, k: int = int(r["digits"])) -> str:
            if math.isnan(x):
                return "–"
            return f"{x:+.2g}" if x != 0 and round(x, k) == 0 else f"{x:+.{k}f}"  # never print a nonzero as 0

        def interval(lo: float, hi: float) -> str:
            return "–" if math.isnan(lo) else f"[{num(lo)}, {num(hi)}]"

        pairs = [kv.split("=") for kv in r["per_pair"].split(";")] if r["per_pair"] else []
        per_pair = "; ".join(f"{k}: {num(float(v))}" for k, v in pairs) or (f"{r['n']} {r['pairs']}s" if r["n"]
                                                                             else "–")
        rows.append({"Claim": r["claim"], "Paper says": r["statement"], "Paper's number": r["paper"],
                     "Arch.": r["arch"], "Δ": r["comparison"], "Measure": f"{r['measure']}, {r['set']}",
                     "Per-pair Δ": per_pair, "Mean Δ": num(r["mean"]),
                     "95 % t interval": interval(r["t_low"], r["t_high"]),
                     "Bootstrap 95 %": interval(r["boot_low"], r["boot_high"]),
                     "Wins": f"{r['wins']}/{r['n']}", "n": f"{r['n']} {r['pairs']}{'' if r['n'] == 1 else 's'}",
                     "Verdict": r["verdict"], "Note": r["note"]})
    out = pd.DataFrame(rows)
    out.attrs["caption"] = t.attrs.get("caption", "")
    out.attrs["kinds"] = t.attrs.get("kinds", "")
    return out


def short_claims(shown: pd.DataFrame) -> str:
    """The compact Markdown table the README quotes verbatim (claim, statement, measure, mean Δ with its t interval,
    wins, verdict), with one line pointing to the full table and its conventions."""
    cols = {"Claim": "Claim", "Paper says": "Paper says", "Δ": "Δ", "Measure": "Measure", "Wins": "Wins",
            "Verdict": "Verdict (computed)"}
    t = shown[list(cols)].rename(columns=cols)
    t.insert(4, "Mean Δ [95 % t interval]", [f"{m} {i}" if i != "–" else m
                                             for m, i in zip(shown["Mean Δ"], shown["95 % t interval"])])
    kinds = shown.attrs.get("kinds", "")
    t.attrs["caption"] = ("Generated by the report stage (`claims_readme.md`); conventions, per-seed values, "
                          "bootstrap intervals and notes: `claims.md`." + (f" {kinds}" if kinds else ""))
    return table_to_markdown(t)


def write_claims(t: pd.DataFrame, out_dir: os.PathLike | str) -> dict[str, Path]:
    """``claims.md`` and ``claims.tex`` (printed), ``claims.csv`` (the unrounded numbers) and ``claims_readme.md``
    (:func:`short_claims`) under ``out_dir``."""
    out = Path(out_dir)
    shown = format_claims(t)
    return {"claims.md": write_bytes_atomic(out / "claims.md", table_to_markdown(shown)),
            "claims_readme.md": write_bytes_atomic(out / "claims_readme.md", short_claims(shown)),
            "claims.tex": write_bytes_atomic(out / "claims.tex", table_to_latex(shown, label="tab:claims")),
            "claims.csv": write_bytes_atomic(out / "claims.csv", t.to_csv(index=False, lineterminator="\n"))}
