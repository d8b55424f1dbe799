"""Tables across DVC experiments, read back from MLflow.

A queued sweep (``dvc exp run --queue -S 'suites.mini.method_params.greg.loss.lambda_grad=0.1,1,10'`` then
``dvc queue start -j 2``) runs every point in its own temporary copy of the repository; their results never meet in
one workspace. Every evaluate run, however, logs its full results JSON to MLflow, tagged with the DVC experiment name.
This module collects those results and builds the λ_∇S ablation table across experiments:

    python -m greg_ood.cli.exps ablation --suite mini --method greg --out reports/mini/queue_ablation

A sweep of the shared weight (``dvc exp run report_mini --queue -S 'suites.mini.train.loss.lambda_grad=0.1,1,10'``)
ends in one table, λ × metric, mean ± std over seeds, one row per (method, λ):

    python -m greg_ood.cli.exps sweep --suite mini [--method greg] [--out reports/mini/sweep]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Optional

from .. import report
from ..run import tracking


def collect_results(suite: str, method: str, *, experiment_prefix: str = "greg-ood",
                    require_exp_name: bool = True) -> list[dict]:
    """Results JSON of the newest finished main-grid evaluate run per (DVC experiment, experiment name) for
    ``method``."""
    client = tracking.make_client()
    exp = client.get_experiment_by_name(f"{experiment_prefix}/{suite}")
    if exp is None:
        return []
    # main-grid runs only: each DVC experiment sets its own lambda there; the suite's own ablation stages would
    # repeat the same (arch, method, lambda, seed) in every experiment
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.stage = 'evaluate' and tags.method = "
                              f"'{method}' and tags.group = 'main' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)
    seen, out = set(), []
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            dvc_exp = r.data.tags.get("dvc.exp_name")
            if require_exp_name and not dvc_exp:
                continue
            key = (dvc_exp, r.data.tags.get("dvc.stage"))
            if key in seen:
                continue
            seen.add(key)
            if "results.json" not in {a.path for a in client.list_artifacts(r.info.run_id)}:
                continue
            local = client.download_artifacts(r.info.run_id, "results.json", tmp)
            doc = json.loads(Path(local).read_text())
            doc["experiment"] = f"{doc['experiment']}@{dvc_exp}"
            doc["group"] = "ablation"
            doc["dvc_exp_name"] = dvc_exp
            out.append(doc)
    return out


def ablation_from_experiments(suite: str, method: str, out_dir: Path, *,
                              experiment_prefix: str = "greg-ood") -> Optional[Path]:
    docs = collect_results(suite, method, experiment_prefix=experiment_prefix)
    if not docs:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    src = out_dir / "results"
    src.mkdir(exist_ok=True)
    for i, d in enumerate(docs):
        f = src / f"{i:04d}.json"
        f.write_text(json.dumps(d))
        files.append(f)
    df = report.load_results(files)
    table = report.ablation_table(df, suite=suite)
    report.write_table(table, out_dir, "ablation_across_experiments")
    report.plot_ablation(df, out_dir / "ablation_across_experiments.png", suite=suite)
    return out_dir / "ablation_across_experiments.md"


#: the sweep table's metrics: column -> (MLflow metric of an evaluate run, factor to %)
SWEEP_METRICS = {"FPR95 % (headline)": ("eval/headline/fpr95", 100.0),
                 "AUROC % (headline)": ("eval/headline/auroc", 100.0),
                 "FPR95 % (mean)": ("eval/mean/fpr95", 100.0), "AUROC % (mean)": ("eval/mean/auroc", 100.0),
                 "ID acc %": ("eval/id_acc", 100.0)}


def sweep_runs(suite: str, method: Optional[str] = None, *, experiment_prefix: str = "greg-ood") -> list[dict]:
    """One row per evaluate run of ``suite`` (``method`` only, if given), of the main grid or the suite's own λ
    ablation (a point of it is the same training at another λ): method, arch, resolved ``lambda_grad``, seed, DVC
    experiment and the :data:`SWEEP_METRICS` in %. A run repeated for the same (method, arch, λ, seed), by a re-run or
    in several experiments, counts once: the newest finished one."""
    client = tracking.make_client()
    exp = client.get_experiment_by_name(f"{experiment_prefix}/{suite}")
    if exp is None:
        return []
    flt = "tags.stage = 'evaluate' and attributes.status = 'FINISHED'"
    if method:
        flt += f" and tags.method = '{method}'"
    runs = client.search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"],
                              max_results=5000)
    seen, out = set(), []
    for r in runs:
        p, m = r.data.params, r.data.metrics
        if r.data.tags.get("group") not in ("main", "ablation") or "lambda_grad" not in p or "seed" not in p:
            continue
        key = (p.get("method"), p.get("arch"), float(p["lambda_grad"]), int(p["seed"]))
        if key in seen:
            continue
        seen.add(key)
        row = {"method": key[0], "arch": key[1], "lambda_grad": key[2], "seed": key[3],
               "dvc_exp": r.data.tags.get("dvc.exp_name", "")}
        row.update({col: m[name] * f for col, (name, f) in SWEEP_METRICS.items() if name in m})
        out.append(row)
    return out


def sweep_table(rows: list[dict], metrics: Optional[list[str]] = None):
    """λ × metric: one row per (method, arch, λ) with the number of seeds and each metric as ``mean ± std`` over
    seeds (sample standard deviation; ``mean`` alone for one seed), 2 decimals; sorted by method, arch, λ."""
    import pandas as pd

    metrics = metrics or [c for c in SWEEP_METRICS if any(c in r for r in rows)]
    df = pd.DataFrame(rows)
    out = []
    for (method, arch, lam), g in df.groupby(["method", "arch", "lambda_grad"], sort=True):
        row = {"method": method, "arch": arch, "λ_grad": f"{lam:g}", "seeds": len(g)}
        for c in metrics:
            v = g[c].dropna() if c in g else g.iloc[0:0]
            row[c] = ("–" if v.empty else f"{v.mean():.2f}" if len(v) == 1
                      else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}")
        out.append(row)
    return pd.DataFrame(out)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ablation", help="λ_∇S ablation table across DVC experiments (from MLflow)")
    a.add_argument("--suite", required=True)
    a.add_argument("--method", default="greg")
    a.add_argument("--out", required=True)
    s = sub.add_parser("sweep", help="λ × metric table, mean ± std over seeds, from the evaluate runs in MLflow")
    s.add_argument("--suite", required=True)
    s.add_argument("--method", help="one method only (default: every method)")
    s.add_argument("--out", help="also write sweep.md/.tex/.csv into this folder")
    args = ap.parse_args(argv)
    if args.cmd == "sweep":
        rows = sweep_runs(args.suite, args.method)
        if not rows:
            raise SystemExit(f"no finished evaluate run{' of ' + args.method if args.method else ''} in the MLflow "
                             f"experiment greg-ood/{args.suite}; run `dvc repro report_{args.suite}` or a sweep first")
        table = sweep_table(rows)
        if args.out:
            report.write_table(table, Path(args.out), "sweep")
        print(table.to_markdown(index=False))
        return
    path = ablation_from_experiments(args.suite, args.method, Path(args.out))
    if path is None:
        raise SystemExit(f"no finished evaluate runs of {args.method} tagged with a DVC experiment in suite "
                         f"{args.suite}; run a sweep first (README: 'Ablating the regularizer weight')")
    print(path.read_text())


if __name__ == "__main__":
    main()
