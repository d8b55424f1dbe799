"""One suite's report (what ``stages/report.py`` runs): every table, the claims table, the figures, ``summary.md``
under ``reports/<suite>/``, and the compact per-method numbers for ``dvc metrics show``.

Inputs (``docs/CONTRACTS.md``; paths as in :mod:`greg_ood.run.paths`): results JSON ``results/<suite>/<exp>.json``,
ROC points ``results/<suite>/roc/<exp>/roc.json``, score arrays ``results/<suite>/scores/<exp>.npz``, training logs
``metrics/<suite>/train/<exp>.train.csv``, certify arrays ``certify/<suite>/<exp>.npz`` with ``certify.json``, and
the paper's numbers ``reports/paper/paper_numbers.csv``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import pandas as pd

from ..run.io import remove_stale_temps, write_bytes_atomic, write_json_atomic
from . import suite_figures as F
from .aggregate import convention_text, headline_set, one_convention, ood_sets, summary_metrics
from .claims import claims_table, write_claims
from .fig_ablation import plot_ablation
from .loading import load_results, load_train_curves
from .margins import margin_table
from .names import GRAD_PAIRS, arch_key, arch_name, method_key, method_name, score_name, set_name
from .noise import NOISE_DATASETS, NoiseInputs, build_noise_finding, noise_inputs_from_names
from .openood_table import write_openood_report
from .paper import NoPaperNumbers, no_paper_numbers_text, paper_comparison
from .tables import ablation_table, grad_ablation_table, main_table, paired_differences
from .writers import write_table

_MANIFEST = ".report-files.json"


def build_suite_report(*, suite: str, metrics_files: Iterable[os.PathLike | str],
                       paper_csv: Optional[os.PathLike | str], out_dir: os.PathLike | str,
                       scores_dir: Optional[os.PathLike | str] = None, plots_dir: Optional[os.PathLike | str] = None,
                       train_csv_files: Iterable[os.PathLike | str] = (),
                       certify_files: Iterable[os.PathLike | str] = (),
                       grad_pairs: Sequence[Sequence[str]] = GRAD_PAIRS,
                       summary_dir: Optional[os.PathLike | str] = None,
                       noise: Optional[NoiseInputs] = None,
                       margins: Optional[Mapping[str, tuple[float, float]]] = None,
                       kinds: Optional[Mapping[str, str]] = None) -> dict[str, Path]:
    """Write every table and figure of one suite under ``out_dir``, plus ``summary.md``.

    * ``main`` (primary score: headline set and mean over OOD sets, FPR95 / AUROC / AUPR-In / AUPR-Out, best values
      bold), ``main_per_set`` (every OOD set), ``main_<score>`` for every other score; ``results_long.csv``
      (every per-seed value, fractions).
    * ``claims``: the paper's claims C1–C6 tested on paired seeds, with a computed verdict
      (:mod:`greg_ood.report.claims`).
    * ``paper_comparison`` when ``paper_csv`` has numbers for the suite's benchmark.
    * ``ablation`` (+ ``figures/ablation.png``) when group "ablation" experiments exist; ``grad_ablation`` for the
      (without, with gradient term) pairs ``grad_pairs`` present.
    * ``paired_differences`` when the baseline ``energy`` and GReg/GReg+ share seeds.
    * figures (see :mod:`greg_ood.report.suite_figures`): ``roc_<arch>``, ``scores_<experiment>``,
      ``gradnorm_<arch>`` (the paper's Figure 3), ``gradnorm_lambda_<arch>``, ``training_curves_<arch>``,
      ``certify_<arch>-s<seed>``.
    * ``margins`` (:mod:`greg_ood.report.margins`) when ``margins`` maps the experiments to their ``(m_in, m_out)``:
      the share of rows inside the penalty's indicators along training, per method.
    * ``noise_finding`` (:mod:`greg_ood.report.noise`) when an OOD set is synthetic noise: ``noise`` names the
      noise sets and the prepared image files (default: the sets named like a noise dataset, no pixel statistics).
    * ``kinds`` maps each OOD set to its declared kind (``natural`` / ``noise``; default: the sets named like a
      noise dataset are noise): with both kinds present, the main and claims tables show the natural-image mean
      (the paper's kind) beside the all-set mean.
    * ``summary_dir`` (when given): one ``<method>-<arch>.json`` per main run group (:func:`summary_metrics`),
      so that ``dvc metrics show`` prints one row per method; stale files there are removed.

    Every file is written to a temp file and renamed into place, so a killed run leaves complete old or new files;
    files that an earlier run listed in ``out_dir/.report-files.json`` and this run did not write are removed.
    Returns ``{name: path}`` of everything written (summary files under ``summary/<name>``).
    """
    out = Path(out_dir)
    df_all = load_results(list(metrics_files))
    df = df_all[df_all["suite"] == suite]
    if df.empty:
        raise ValueError(f"build_suite_report: none of the metrics files is for suite {suite!r} "
                         f"(found {sorted(df_all['suite'].unique())})")
    notes: list[str] = []
    primaries = sorted(df["primary_score"].unique())
    # one detection score for all rows, or each method's own (DOS detects with its absent-class output)
    primary = primaries[0] if len(primaries) == 1 else "primary"
    conv = one_convention(df, f"build_suite_report({suite})")
    pairs = [tuple(p) for p in grad_pairs]
    natural = natural_sets(ood_sets(df), kinds)
    written = _tables(df, suite, primary, out, paper_csv, pairs, notes, natural)
    written.update(write_openood_report(sorted(df["source"].unique()), suite, out))
    written.update(write_claims(claims_table(df, suite=suite, score=primary, grad_pairs=pairs,
                                             train_csv_files=[Path(f) for f in train_csv_files],
                                             certify_files=[Path(f) for f in certify_files],
                                             paper_csv=paper_csv, natural=natural), out))
    if margins is not None:
        written.update(_margins(df, suite, [Path(f) for f in train_csv_files], margins, notes, out))
    if (df["group"] == "ablation").any():
        written["figures/ablation.png"] = plot_ablation(df, out / "figures" / "ablation.png", suite=suite,
                                                        score=primary)
    if plots_dir is not None:
        written.update(F.roc_figures(df, primary, conv, Path(plots_dir), out, suite, notes))
    if scores_dir is not None:
        written.update(F.score_figures(df, primary, Path(scores_dir), out, suite, notes))
    written.update(F.training_figures(df, primary, [Path(f) for f in train_csv_files], out, suite))
    written.update(F.certify_figures(df, [Path(f) for f in certify_files], out, suite, notes))
    written.update(build_noise_finding(df, suite=suite, inputs=noise or noise_inputs_from_names(ood_sets(df)),
                                       out=out, scores_dir=scores_dir, train_csv_files=train_csv_files, notes=notes))
    written["summary.md"] = write_bytes_atomic(out / "summary.md", _summary(suite, df, primary, conv, written,
                                                                            notes, out))
    _cleanup_stale(out, written)
    if summary_dir is not None and (df["group"] == "main").any():
        written.update(_write_summary_metrics(df, suite, primary, Path(summary_dir)))
    return written


def natural_sets(sets: Sequence[str], kinds: Optional[Mapping[str, str]]) -> list[str]:
    """The natural-image OOD sets among ``sets``: those whose declared kind is ``natural`` (a set without a declared
    kind: one not named like a synthetic-noise dataset)."""
    kinds = kinds or {}
    return [s for s in sets if (kinds.get(s) or ("noise" if s in NOISE_DATASETS else "natural")) == "natural"]


def _tables(df: pd.DataFrame, suite: str, primary: str, out: Path, paper_csv, pairs, notes: list[str],
            natural: Sequence[str]) -> dict:
    written: dict[str, Path] = {}

    def table(name: str, t: pd.DataFrame) -> None:
        for k, p in write_table(t, out, name).items():
            written[f"{name}.{k}"] = p

    long = df.drop(columns=["source"]).sort_values(["group", "arch", "method", "lambda_grad", "seed", "score",
                                                    "ood_set"], kind="stable")
    written["results_long.csv"] = write_bytes_atomic(out / "results_long.csv", long.to_csv(index=False,
                                                                                      lineterminator="\n"))
    has_main = (df["group"] == "main").any()
    if not has_main:
        notes.append("No main-group experiments: main table skipped.")
        return written
    table("main", main_table(df, suite=suite, score=primary, natural=natural))
    table("main_per_set", main_table(df, suite=suite, score=primary, per_set=True, metrics=("fpr95", "auroc"),
                                     natural=natural))
    for s in sorted(set(df["score"]) - {primary}):
        table(f"main_{s}", main_table(df, suite=suite, score=s, natural=natural))
    if paper_csv is not None:
        try:
            table("paper_comparison", paper_comparison(df, paper_csv, suite=suite, score=primary))
        except NoPaperNumbers:
            written["paper_comparison.md"] = write_bytes_atomic(out / "paper_comparison.md",
                                                                no_paper_numbers_text(suite, paper_csv))
    if (df["group"] == "ablation").any():
        table("ablation", ablation_table(df, suite=suite, score=primary))
    for name, make in (("grad_ablation", lambda: grad_ablation_table(df, suite=suite, score=primary, pairs=pairs)),
                       ("paired_differences", lambda: paired_differences(df, suite=suite, score=primary))):
        try:
            table(name, make())
        except ValueError as e:
            notes.append(f"{name} skipped: {e}")
    return written


def _margins(df: pd.DataFrame, suite: str, train_csv_files: Sequence[Path],
             margins: Mapping[str, tuple[float, float]], notes: list[str], out: Path) -> dict[str, Path]:
    try:
        t = margin_table(load_train_curves(train_csv_files, df), margins, suite=suite)
    except ValueError as e:
        notes.append(f"margins skipped: {e}")
        return {}
    return {f"margins.{k}": p for k, p in write_table(t, out, "margins").items()}


def _write_summary_metrics(df: pd.DataFrame, suite: str, primary: str, summary_dir: Path) -> dict[str, Path]:
    rows = summary_metrics(df, suite=suite, score=primary)
    written = {}
    for k, v in rows.items():
        write_json_atomic(summary_dir / f"{k}.json", v)
        written[f"summary/{k}.json"] = summary_dir / f"{k}.json"
    for f in summary_dir.glob("*.json"):
        if f"summary/{f.name}" not in written:
            f.unlink()
    remove_stale_temps(summary_dir)
    return written


def _summary(suite: str, df: pd.DataFrame, primary: str, conv: str, written: Mapping[str, Path],
             notes: Sequence[str], out: Path) -> str:
    exps = df.drop_duplicates("experiment")
    lines = [f"# Report: suite `{suite}`", "",
             "## Conventions",
             f"* Detection score for the headline tables: {score_name(primary)}; higher score = "
             f"in-distribution.",
             f"* {convention_text(conv)}.",
             "* AUROC does not depend on which class is positive. Values are percentages; mean ± std over seeds "
             "(std with ddof=1; a single seed shows no ±). Mean = unweighted mean over the OOD sets; where a suite "
             "has synthetic-noise sets, the main and claims tables also give the mean over its natural-image sets.",
             "* Paper numbers are second-hand (see `reports/paper/README.md`) and shown as \"reported "
             "(unverified)\"; anchor rows come from other protocols; n/r = not reported in accessible sources.",
             "",
             "## Experiments",
             f"* {len(exps)} experiments: " + ", ".join(
                 f"{g} {n}" for g, n in exps["group"].value_counts().sort_index().items()) + ".",
             f"* Architectures: {', '.join(arch_name(a) for a in sorted(exps['arch'].unique(), key=arch_key))}"
             f"; methods: {', '.join(method_name(m) for m in sorted(exps['method'].unique(), key=method_key))}"
             f"; seeds: {', '.join(str(s) for s in sorted(exps['seed'].unique()))}.",
             f"* OOD sets: {', '.join(set_name(s) for s in ood_sets(df))}"
             + (f"; headline set: {set_name(headline_set(df))}." if headline_set(df) else "."),
             "", "## Tables"]
    for k in sorted(written):
        if k.endswith(".md") and "/" not in k:
            stem = k[:-3]
            alt = ", ".join(f"[{lab}]({stem}.{ext})" for lab, ext in (("LaTeX", "tex"), ("CSV", "csv"))
                            if f"{stem}.{ext}" in written)
            lines.append(f"* [{stem}]({stem}.md)" + (f" ({alt})" if alt else ""))
    lines.append("* [results_long.csv](results_long.csv): every per-seed value (fractions)")
    figs = sorted(k for k in written if k.startswith("figures/"))
    lines += ["", "## Figures"] + ([f"* [{Path(k).stem}]({k})" for k in figs] or ["* none"])
    for key, head in (("claims.md", "The paper's claims"), ("main.md", "Main table")):
        if key in written:
            lines += ["", f"## {head}", "", Path(written[key]).read_text().rstrip()]
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
    for r in set(old) - set(rel):
        p = out / r
        if p.is_file() and ".." not in Path(r).parts:
            p.unlink()
    remove_stale_temps(out, recursive=True)  # temporaries of a killed earlier run
    write_bytes_atomic(mf, json.dumps(rel, indent=1) + "\n")
