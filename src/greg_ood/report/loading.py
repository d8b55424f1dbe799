"""Reading the report's inputs: per-run results JSON, the paper's numbers, certify arrays, training-curve CSVs.

Every reader checks what it reads and raises ``ValueError`` naming the file and the key when something is missing or
out of range. File formats: ``docs/CONTRACTS.md``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .names import MEAN, METRICS

_REQUIRED_TOP = ("experiment", "suite", "method", "arch", "seed", "group", "lambda_grad", "lambda_energy",
                 "convention", "id_accuracy", "fpr95", "auroc", "aupr_in", "aupr_out", "scores", "ood_sets",
                 "headline_set")
_REQUIRED_CONVENTION = ("primary_score", "positive", "fpr_rule", "tpr")
_GROUPS = ("main", "ablation", "grad_ablation")
_TOL = 1e-6


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
    ``note = "architecture inferred"``; an empty ``value`` (the number is unknown) becomes NaN. Adds ``status``:
    "reported (unverified)", or "anchor (other protocol)" for rows whose ``table`` starts with ``anchor``."""
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
    try:  # an empty value = the paper's number is unknown (NaN)
        p["value"] = p["value"].replace("", "nan").astype(float)
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric value ({e}); leave the cell empty when the number is unknown") from e
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



def load_certify_meta(certify_json: os.PathLike | str) -> dict[str, dict]:
    """The certify stage's ``certify.json``: ``{experiment: {"experiment", "method", "seed", "gamma", "eps", ...}}``
    (older files are keyed by method, without ``method`` inside). Returns ``{experiment: {"method", "gamma",
    "eps"}}`` (``eps`` None = no radius cap). A missing file gives ``{}``."""
    p = Path(certify_json)
    if not p.is_file():
        return {}
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e
    out = {}
    for key, block in doc.items():
        if not isinstance(block, Mapping) or "experiment" not in block or "gamma" not in block:
            raise ValueError(f"{p}: entry {key!r} needs 'experiment' and 'gamma'")
        eps = block.get("eps")
        out[str(block["experiment"])] = {"method": str(block.get("method", key)), "gamma": float(block["gamma"]),
                                         "eps": None if eps is None else float(eps)}
    return out


def experiment_of_csv(train_csv: os.PathLike | str) -> str:
    """``mini-greg-small_cnn-s0.train.csv`` -> ``mini-greg-small_cnn-s0``."""
    name = Path(train_csv).name
    for suf in (".train.csv", ".csv"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return Path(train_csv).stem


def load_train_curves(train_csv_files: Iterable[os.PathLike | str], runs: pd.DataFrame) -> pd.DataFrame:
    """Training logs as one long frame: the CSV columns (numbers; empty cells are NaN) plus ``experiment, method,
    arch, seed, group, lambda_grad`` taken from ``runs`` (one row per experiment, e.g. the results frame).

    Raises ``ValueError`` naming the file when it has no ``step`` column or its experiment is not in ``runs``."""
    info = runs.drop_duplicates("experiment").set_index("experiment")
    frames = []
    for f in train_csv_files:
        path = Path(f)
        exp = experiment_of_csv(path)
        if exp not in info.index:
            raise ValueError(f"{path}: no results for experiment {exp!r}; pass the training logs of the "
                             f"experiments whose results are reported")
        t = pd.read_csv(path)
        if "step" not in t.columns:
            raise ValueError(f"{path}: missing column 'step'")
        t = t.apply(pd.to_numeric, errors="coerce")
        r = info.loc[exp]
        t = t.assign(experiment=exp, method=r["method"], arch=r["arch"], seed=int(r["seed"]), group=r["group"],
                     lambda_grad=float(r["lambda_grad"]))
        frames.append(t)
    if not frames:
        return pd.DataFrame(columns=["experiment", "method", "arch", "seed", "group", "lambda_grad", "step"])
    return pd.concat(frames, ignore_index=True)
