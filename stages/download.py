"""download@<dataset>: fetch (or find), verify and prepare one dataset into data/prepared/<dataset>/."""
from __future__ import annotations

import argparse
import json

from greg_ood import data, pipeline, tracking
from greg_ood.runguard import StageError
from greg_ood.runinfo import RunInfo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dataset", help="dataset name (a key of `datasets` in params.yaml)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the traceback with an error")
    args = ap.parse_args()
    pipeline.setup_logging()
    cfg = pipeline.load_config()
    if args.dataset not in data.DATASETS:
        raise StageError(f"unknown dataset {args.dataset!r}; known: {sorted(data.DATASETS)}")
    opts = cfg.dataset_options(args.dataset)
    with tracking.stage_run(RunInfo("download", dataset=args.dataset), params={"options": opts},
                            experiment_prefix=cfg.params.mlflow.experiment_prefix) as run:
        manifest = data.prepare(args.dataset, data_dir=pipeline.paths(cfg).data, options=opts)
        run.log_dict(manifest, "manifest.json")
        print(json.dumps({k: v for k, v in manifest.items() if k in ("name", "splits")}, default=str)[:2000])


if __name__ == "__main__":
    pipeline.run_stage(main)
