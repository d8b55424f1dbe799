"""Reporting: result tables (Markdown / LaTeX / CSV), the claims table, figures (PNG), the comparison with the
paper's numbers, and the suite report that ``stages/report.py`` writes under ``reports/<suite>/``.

Pure library code: every input and output path is an argument; no argv, no MLflow, no global state. Modules:

* :mod:`.names` — display names and orders (methods, architectures, OOD sets, scores, metrics);
* :mod:`.loading` — results JSON, paper numbers, certify arrays, training logs;
* :mod:`.aggregate` — row selection, conventions, mean ± std cells, captions, summary metrics;
* :mod:`.tables` — main, ablation, gradient-term ablation and paired-difference tables;
* :mod:`.paper` — our numbers next to the paper's; :mod:`.stats` and :mod:`.claims` — the claims table;
* :mod:`.noise` — the noise finding (which runs score synthetic noise as ID, and the evidence on why);
* :mod:`.writers` — Markdown, LaTeX and CSV;
* :mod:`.plotting` and the ``fig_*`` modules — figures (matplotlib is imported only when one is drawn);
* :mod:`.suite` and :mod:`.suite_figures` — one suite's whole report.

Import the submodule you use (``from greg_ood.report.fig_selection import plot_selection``): a stage's DVC
dependencies are the modules it imports, so a stage that draws one figure does not depend on the tables. The
names below stay reachable as ``greg_ood.report.<name>`` for interactive use and older callers; each is loaded
from its submodule on first access.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "names": ("METHOD_ORDER", "METHOD_NAMES", "ARCH_NAMES", "SET_NAMES", "METRICS"),
    "loading": ("load_results", "load_paper_numbers", "load_certify", "load_train_curves"),
    "aggregate": ("format_mean_std", "convention_text", "summary_metrics"),
    "tables": ("main_table", "ablation_table", "grad_ablation_table", "paired_differences"),
    "paper": ("paper_comparison", "SUITE_BENCHMARK"),
    "noise": ("build_noise_finding",),
    "writers": ("write_table", "table_to_markdown", "table_to_latex", "latex_escape"),
    "claims": ("claims_table", "write_claims"),
    "fig_detection": ("plot_roc", "plot_score_histograms"),
    "fig_training": ("plot_training_curves", "plot_gradnorm"),
    "fig_ablation": ("plot_ablation",),
    "fig_selection": ("plot_selection",),
    "fig_certify": ("plot_certify", "plot_certify_runs"),
    "suite": ("build_suite_report",),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
