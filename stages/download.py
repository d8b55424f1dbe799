"""download@<dataset>: fetch (or find), verify and prepare one dataset into data/prepared/<dataset>/."""
from __future__ import annotations

import argparse
from urllib.parse import urlparse

from greg_ood import data
from greg_ood.run import preflight, stagecli, tracking
from greg_ood.run.runguard import StageError
from greg_ood.run.runinfo import RunInfo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dataset", help="dataset name (a key of `datasets` in params.yaml)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the traceback with an error")
    args = ap.parse_args()
    stagecli.setup_logging()
    cfg = stagecli.load_config()
    if args.dataset not in data.DATASETS:
        raise StageError(f"unknown dataset {args.dataset!r}; known: {sorted(data.DATASETS)}")
    opts = cfg.dataset_options(args.dataset)
    info = RunInfo("download", dataset=args.dataset)
    ddir = stagecli.paths(cfg).data
    preflight.check(preflight.Needs(outputs=[ddir / "prepared" / args.dataset / "manifest.json"], data_dir=ddir))
    reused = (ddir / "prepared" / args.dataset / "manifest.json").is_file()
    with tracking.stage_run(info, params={"options": opts},
                            experiment_prefix=cfg.params.mlflow.experiment_prefix) as run:
        try:
            manifest = data.prepare(args.dataset, data_dir=ddir, options=opts)
        except data.DownloadError as e:
            raise StageError(f"{info.dvc_stage}: {e}\n{_check_hint(cfg, args.dataset)}") from e
        run.log_dict(manifest, "manifest.json")
        print(summary_line(info.dvc_stage, manifest, reused))


def summary_line(stage: str, manifest: dict, reused: bool) -> str:
    """``download@X: N images in K splits (train 60,000, test 10,000), md5 ok, downloaded from host``."""
    splits = manifest.get("splits", {})
    n = sum(int(s.get("count", 0)) for s in splits.values())
    parts = ", ".join(f"{k} {int(v.get('count', 0)):,}" for k, v in splits.items())
    srcs = manifest.get("sources", [])
    checks = sorted({a for s in srcs for a in ("sha256", "md5") if s.get(a)})
    verified = f"{'/'.join(checks)} ok" if checks else "no download"
    hosts = sorted({urlparse(s.get("url_used", "")).netloc for s in srcs} - {""})
    if reused:
        origin = "prepared copy reused"
    elif hosts:
        origin = "downloaded from " + ", ".join(hosts)
    else:
        origin = "local copy" if srcs else "built locally"
    plural = "s" if len(splits) != 1 else ""
    return f"{stage}: {n:,} images in {len(splits)} split{plural} ({parts}), {verified}, {origin}"


def _check_hint(cfg, dataset: str) -> str:
    suites = [s for s in cfg.params.suites if dataset in data.suite_datasets(cfg, s)]
    cmds = " or ".join(f"`python -m greg_ood.data check --suite {s}`" for s in suites) or \
        "`python -m greg_ood.data check --suite <suite>`"
    return (f"Every file a suite needs (sizes, checksums, sources, where to place them): {cmds}; "
            "`dvc repro -k` tries the other downloads too.")


if __name__ == "__main__":
    stagecli.run_stage(main)
