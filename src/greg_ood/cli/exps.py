"""Tables across DVC experiments, read back from MLflow.

A queued sweep (``dvc exp run --queue -S 'suites.mini.method_params.greg.loss.lambda_grad=0.1,1,10'`` then
``dvc queue start -j 2``) runs every point in its own temporary copy of the repository; their results never meet in
one workspace. Every evaluate run, however, logs its full results JSON to MLflow, tagged with the DVC experiment name.
This module collects those results and builds the λ_∇S ablation table across experiments:

    python -m greg_ood.cli.exps ablation --suite mini --method greg --out reports/mini/queue_ablation
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Optional

from .. import report, tracking


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


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ablation", help="λ_∇S ablation table across DVC experiments (from MLflow)")
    a.add_argument("--suite", required=True)
    a.add_argument("--method", default="greg")
    a.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    path = ablation_from_experiments(args.suite, args.method, Path(args.out))
    if path is None:
        raise SystemExit(f"no finished evaluate runs of {args.method} tagged with a DVC experiment in suite "
                         f"{args.suite}; run a sweep first (README: 'Ablating the regularizer weight')")
    print(path.read_text())


if __name__ == "__main__":
    main()
