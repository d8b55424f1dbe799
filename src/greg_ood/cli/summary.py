"""The answer of a finished suite, in a terminal: what ``make mini`` and ``make fmnist`` print last.

Read from the report stage's committed outputs only (``reports/<suite>/claims.csv`` and ``main.csv``), so it prints
the same whether the pipeline just ran or the files came with the clone:

* each claim of the paper with its computed verdict (mean Δ and its 95 % t interval, as in ``claims.md``);
* each method's headline: FPR95, AUROC and ID accuracy in %, mean ± std over seeds (``main.csv``);
* where the tables, figures and runs are, and the commands that open them.

    python -m greg_ood.cli.summary --suite mini       # make summary SUITE=mini
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import yaml

from ..report.claims import format_claims

#: the columns of claims.csv that hold text (read back as text, empty stays empty)
_TEXT = ("claim", "statement", "paper", "arch", "comparison", "measure", "set", "unit", "pairs", "direction",
         "per_pair", "verdict", "note")


class SummaryError(Exception):
    """A report file the summary needs is missing or not what the report stage writes."""


def read_claims(path: Path) -> pd.DataFrame:
    """``claims.csv`` as printed rows (:func:`greg_ood.report.claims.format_claims`: the numbers of ``claims.md``)."""
    if not path.is_file():
        raise SummaryError(f"{path}: not found; run the report stage first (`make mini`, or `dvc repro` of the "
                           f"suite's report stage)")
    t = pd.read_csv(path, dtype={c: str for c in _TEXT}, keep_default_na=False, na_values={"mean": [""],
                    "t_low": [""], "t_high": [""], "boot_low": [""], "boot_high": [""]})
    return format_claims(t)


def claim_lines(shown: pd.DataFrame) -> list[str]:
    """Per claim a line with its statement and comparison, then one line per measure: mean Δ [t interval] and the
    verdict."""
    width = max((len(m) for m in shown["Measure"]), default=0)
    out, last = [], None
    for r in shown.to_dict("records"):
        head = (r["Claim"], r["Paper says"], r["Δ"], r["Arch."])
        if head != last:
            out.append(f"  {r['Claim']} {r['Paper says']} (Δ = {r['Δ']}, {r['Arch.']})")
            last = head
        interval = "" if r["95 % t interval"] == "–" else f" {r['95 % t interval']}"
        out.append(f"      {r['Measure']:<{width}}  {r['Mean Δ'] + interval:<24} {r['Verdict']}")
    return out


def headline_columns(main: pd.DataFrame) -> tuple[str, str, str, str]:
    """(where, FPR95 column, AUROC column, ID accuracy column) of ``main.csv``: the headline set's, else the first
    mean's (the natural-image mean where the table has one)."""
    fpr = [c for c in main.columns if c.endswith("FPR95 ↓")]
    pick = next((c for c in fpr if "(headline)" in c), fpr[0] if fpr else None)
    if pick is None or "ID acc. ↑" not in main.columns:
        raise SummaryError("main.csv: no FPR95 or ID accuracy column; re-run the report stage")
    where = pick[: -len(" FPR95 ↓")]
    return where, pick, f"{where} AUROC ↑", "ID acc. ↑"


def method_lines(main: pd.DataFrame) -> list[str]:
    """The headline table: one line per (architecture, method) of ``main.csv``."""
    where, fpr, auroc, acc = headline_columns(main)
    main = main.assign(Architecture=main["Architecture"].replace("", pd.NA).ffill())
    name_w = max(len(m) for m in main["Method"])
    out = [f"  on {where}; % as mean ± std over seeds (n seeds)",
           f"  {'Architecture':<13} {'Method':<{name_w}}  {'n':>2}  {'FPR95 ↓':<15} {'AUROC ↑':<15} ID acc. ↑"]
    for r in main.to_dict("records"):
        out.append(f"  {r['Architecture']:<13} {r['Method']:<{name_w}}  {r['n']:>2}  {r[fpr]:<15} {r[auroc]:<15} "
                   f"{r[acc]}")
    return out


def where_lines(suite: str, root: Path) -> list[str]:
    """Where the tables, figures and runs are, and how to open them."""
    prefix = "greg-ood"
    params = root / "params.yaml"
    if params.is_file():
        prefix = ((yaml.safe_load(params.read_text()) or {}).get("mlflow") or {}).get("experiment_prefix", prefix)
    return [f"  tables:  reports/{suite}/summary.md (every table: claims.md, main.md, main_per_set.md, ablation.md)",
            f"  figures: reports/{suite}/figures/; all curves as one offline page: make plots SUITE={suite} "
            f"(opens dvc_plots/index.html)",
            f"  runs:    make mlflow-ui, then http://127.0.0.1:5000, experiment {prefix}/{suite}",
            f"  numbers: make dvc ARGS=\"metrics show --md metrics/{suite}/summary\""]


def summary_text(suite: str, root: Path = Path(".")) -> str:
    """The whole summary of ``suite`` from ``root/reports/<suite>/``."""
    rep = root / "reports" / suite
    shown = read_claims(rep / "claims.csv")
    main_csv = rep / "main.csv"
    if not main_csv.is_file():
        raise SummaryError(f"{main_csv}: not found; run the report stage first")
    main = pd.read_csv(main_csv, dtype=str, keep_default_na=False)
    lines = [f"== {suite}: what the runs say ==",
             f"The paper's claims, each verdict computed from a 95 % t interval over paired seeds "
             f"(reports/{suite}/claims.md):"]
    lines += claim_lines(shown)
    lines += ["Each method's headline:"] + method_lines(main)
    lines += ["Where it is:"] + where_lines(suite, root)
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, help="suite name, e.g. mini or fmnist")
    ap.add_argument("--root", default=".", help="the repository root (default: the current folder)")
    args = ap.parse_args(argv)
    try:
        sys.stdout.write(summary_text(args.suite, Path(args.root)))
    except SummaryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
