"""The OpenOOD v1.5 protocol's tables (``reports/<suite>/openood_v1_5.*`` and ``openood_v1_5_per_set.*``) from the
``protocols.openood_v1_5`` blocks of the results files (:mod:`greg_ood.run.openood_eval`).

Rows: (Architecture, Method) of the main runs; cells "mean ± std" over seeds, in percent. ``openood_v1_5``: per group
(near-OOD, far-OOD) AUROC and FPR95 in both conventions, then the ID accuracy; ``openood_v1_5_per_set``: AUROC and
OpenOOD's FPR95 per set. ``openood_v1_5_long.csv``: every per-seed value (fractions).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..run.io import write_bytes_atomic
from ..data.openood import GROUPS, OPENOOD_V1_5
from .aggregate import format_mean_std, method_frame
from .names import arch_key, arch_name, method_key, method_name, score_name
from .writers import write_table

METRIC_COLUMNS = {"auroc": "AUROC ↑", "fpr95_ood_positive": "FPR95 (OOD+, OpenOOD) ↓",
                  "fpr95_id_positive": "FPR95 (ID+, paper) ↓"}
GROUP_NAMES = {"near": "Near-OOD", "far": "Far-OOD"}
SET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tin": "TIN", "mnist": "MNIST", "svhn": "SVHN",
             "texture": "Textures", "places365": "Places365"}


def load_openood(metrics_files: Iterable[os.PathLike | str]) -> pd.DataFrame:
    """One row per main-group experiment × (set or group mean): ``experiment, method, arch, seed, score, row, kind,
    id_accuracy`` and the three metrics (fractions); ``kind`` is "near"/"far" for a set, "mean" for a group's mean
    (``row`` then names the group). Files without an OpenOOD block are skipped."""
    rows = []
    for f in metrics_files:
        doc = json.loads(Path(f).read_text())
        block = doc.get("protocols", {}).get(OPENOOD_V1_5)
        if block is None or doc.get("group") != "main":
            continue
        base = {"experiment": doc["experiment"], "method": doc["method"], "arch": doc["arch"], "seed": doc["seed"],
                "score": block["score"], "id_accuracy": block["id_accuracy"]}
        for name, m in block["per_set"].items():
            rows.append({**base, "row": name, "kind": m["group"], **{k: m[k] for k in METRIC_COLUMNS}})
        for g in GROUPS:
            rows.append({**base, "row": g, "kind": "mean", **{k: block[g][k] for k in METRIC_COLUMNS}})
    return pd.DataFrame(rows)


def _table(d: pd.DataFrame, columns: list[tuple[str, str, str]], accuracy: bool) -> pd.DataFrame:
    """``columns``: (row value, metric, group header) -> one "mean ± std" column each; rows (Architecture, Method)."""
    heads = [("", "n")] + [(h, METRIC_COLUMNS[m]) for _, m, h in columns] + ([("", "ID acc. ↑")] if accuracy else [])
    lower = [False] + [m != "auroc" for _, m, _ in columns] + [False] * accuracy
    cells, means, index = [], [], []
    for (arch, method), g in sorted(d.groupby(["arch", "method"]), key=lambda kv: (arch_key(kv[0][0]),
                                                                                   method_key(kv[0][1]))):
        row, mean = [str(g["seed"].nunique())], [float("nan")]
        for r, m, _ in columns:
            v = g.loc[g["row"] == r].sort_values("seed")[m].tolist()
            row.append(format_mean_std(v))
            mean.append(round(100 * sum(v) / len(v), 2) if v else float("nan"))
        if accuracy:
            acc = g.drop_duplicates("experiment")["id_accuracy"].tolist()
            row.append(format_mean_std(acc))
            mean.append(float("nan"))
        cells.append(row)
        means.append(mean)
        index.append((arch_name(arch), method_name(method)))
    return method_frame(cells, index, heads, means, lower)


def _caption(suite: str, d: pd.DataFrame, what: str) -> str:
    seeds = sorted(d["seed"].unique())
    return (f"{suite}, OpenOOD v1.5 protocol: {what} Detection score: "
            f"{', '.join(score_name(s) for s in sorted(d['score'].unique()))} (higher = ID). "
            "FPR95 (OOD+, OpenOOD) = OpenOOD's convention: OOD positive, the fraction of ID test images flagged OOD "
            "at the first threshold catching 95 % of the OOD set; FPR95 (ID+, paper) = the paper's: the fraction "
            "of OOD images accepted at 95 % ID recall. AUROC is the same under both. Percent; mean ± std over "
            f"seeds {', '.join(map(str, seeds))} (ddof = 1). Bold: best per column within an architecture.")


def openood_tables(d: pd.DataFrame, suite: str) -> dict[str, pd.DataFrame]:
    """``{"openood_v1_5": group means, "openood_v1_5_per_set": per set}`` of :func:`load_openood` rows."""
    main = _table(d, [(g, m, GROUP_NAMES[g]) for g in GROUPS for m in METRIC_COLUMNS], accuracy=True)
    main.attrs["caption"] = _caption(suite, d, "unweighted mean over the near-OOD sets and over the far-OOD sets.")
    sets = d.loc[d["kind"] != "mean"].drop_duplicates("row")
    per = _table(d, [(r, m, f"{SET_NAMES.get(r, r)} ({k})") for r, k in zip(sets["row"], sets["kind"])
                     for m in ("auroc", "fpr95_ood_positive")], accuracy=False)
    per.attrs["caption"] = _caption(suite, d, "every set (near or far in brackets).")
    return {"openood_v1_5": main, "openood_v1_5_per_set": per}


def write_openood_report(metrics_files: Iterable[os.PathLike | str], suite: str, out_dir: os.PathLike | str) \
        -> dict[str, Path]:
    """Write the OpenOOD tables (Markdown, LaTeX, CSV) and ``openood_v1_5_long.csv`` under ``out_dir``; nothing
    (``{}``) when no results file holds an OpenOOD block."""
    d = load_openood(metrics_files)
    if d.empty:
        return {}
    out = Path(out_dir)
    written = {}
    for stem, t in openood_tables(d, suite).items():
        written.update({f"{stem}.{k}": p for k, p in write_table(t, out, stem).items()})
    long = d.sort_values(["arch", "method", "seed", "kind", "row"], kind="stable")
    written["openood_v1_5_long.csv"] = write_bytes_atomic(out / "openood_v1_5_long.csv",
                                                          long.to_csv(index=False, lineterminator="\n"))
    return written
