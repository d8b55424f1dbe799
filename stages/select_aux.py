"""select_<S>@<arch>: energy-based auxiliary subset selection with the pretrained model.

The pretrained model scores energy and penultimate features for the whole auxiliary pool; features are normalised and
clustered; per cluster the lowest-energy (informative) and, two-way, highest-energy members are kept, topped up at
random to the configured size. `size: all` keeps the whole pool (the paper's behaviour: GReg+ then samples online per
step inside it). Writes the kept indices, a summary (energy statistics, cluster sizes, overlap-guard counts) and a
figure (energy histogram kept vs all, cluster sizes, an image grid).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from greg_ood import data as D
from greg_ood.run import openood_eval, pipeline, preflight, tracking
from greg_ood.run.evaluation import forward_all
from greg_ood.run.io import atomic_open, write_json_atomic
from greg_ood.report.fig_selection import plot_selection
from greg_ood.run.runinfo import RunInfo
from greg_ood.sampling import cluster_features, energy_cluster_select
from greg_ood.scores import energy

log = logging.getLogger("greg_ood")


def main() -> None:
    args, cfg = pipeline.stage_cli(__doc__, arch=True)
    s = cfg.suite(args.suite)
    sc = s.select
    device = pipeline.init_runtime(cfg, sc.seed)
    P = pipeline.paths(cfg)
    out = P.selection(args.suite, args.arch)
    pretrain = RunInfo("pretrain", suite=args.suite, arch=args.arch).dvc_target
    preflight.check(preflight.Needs(outputs=[out / "indices.npy", out / "summary.json", out / "selection.png"],
                                    inputs=[(P.pretrained(args.suite, args.arch), f"dvc repro {pretrain}")],
                                    data_dir=P.data))
    sd = pipeline.suite_data(cfg, args.suite, aux=True, ood=True)
    model = pipeline.load_model(P.pretrained(args.suite, args.arch),
                                pipeline.build_model(cfg, args.suite, args.arch, "ce"), device,
                                stage=RunInfo("pretrain", suite=args.suite, arch=args.arch).dvc_target)
    out = P.selection(args.suite, args.arch)
    with tracking.stage_run(RunInfo("select", suite=args.suite, arch=args.arch),
                            params={"select": sc.model_dump(), "arch": args.arch},
                            experiment_prefix=cfg.params.mlflow.experiment_prefix) as run:
        logits, feats = forward_all(model, sd.aux.images, mean=sd.mean, std=sd.std, device=device,
                                    batch_size=sc.batch_size)
        e = energy(logits)
        n = len(e)
        gen = torch.Generator().manual_seed(sc.seed)
        k = min(sc.n_clusters, n)
        labels = cluster_features(feats, k, normalization=sc.normalization, n_init=sc.n_init, generator=gen)
        if sc.size == "all" or int(sc.size) >= n:
            keep = np.arange(n)
        else:
            size = int(sc.size)
            per = size // 2 if sc.two_way else size
            keep = energy_cluster_select(e, feats, n_clusters=k, n_select=per, two_way=sc.two_way,
                                         normalization=sc.normalization, n_init=sc.n_init,
                                         generator=gen).cpu().numpy()
            keep = np.sort(keep[:size])
        overlap = D.overlap_guard(sd.aux, {"id_test": sd.id_test, **sd.ood,
                                           **openood_eval.aux_overlap_sets(cfg, args.suite)})
        if any(overlap.values()):
            log.warning("overlap guard: auxiliary pool shares exact duplicates with test sets: %s", overlap)
        sizes = torch.bincount(torch.as_tensor(labels).long(), minlength=k).tolist()
        e_np = e.numpy()
        summary = {"pool": n, "kept": int(len(keep)), "size": sc.size, "n_clusters": k,
                   "energy_all": _stats(e_np), "energy_kept": _stats(e_np[keep]), "cluster_sizes": sizes,
                   "overlap_guard": overlap}
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "indices.npy") as f:
            np.save(f, keep.astype(np.int64))
        write_json_atomic(out / "summary.json", summary)
        rng = np.random.RandomState(sc.seed)
        grid = sd.aux.images[np.sort(rng.choice(keep, min(64, len(keep)), replace=False))]
        plot_selection(e_np, e_np[keep], np.asarray(sizes), grid, out / "selection.png")
        run.log_metrics({"select/pool": n, "select/kept": len(keep),
                         "select/energy_all_mean": summary["energy_all"]["mean"],
                         "select/energy_kept_mean": summary["energy_kept"]["mean"],
                         **{f"select/overlap/{k_}": v for k_, v in overlap.items()}})
        run.log_artifact(out, "selection")


def _stats(x: np.ndarray) -> dict:
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max()),
            "p05": float(np.percentile(x, 5)), "p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95))}


if __name__ == "__main__":
    pipeline.run_stage(main)
