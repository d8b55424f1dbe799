"""train_<S>@<method>-<arch>-<seed>: fine-tune (or train from scratch) one method on one architecture/seed.

With --lambda-grad the run is a point of the suite's lambda_grad ablation (experiment name gets `-lg<value>`).
With train.nproc > 1 the stage re-executes itself under torchrun (DDP; docs/scale-out.md).
"""
from __future__ import annotations

import sys

import numpy as np

from greg_ood.run import pipeline, preflight
from greg_ood.run.distributed import distributed_context, relaunch_under_torchrun
from greg_ood.run.runinfo import RunInfo
from greg_ood.run.runlog import RunRecord, run_training
from greg_ood.run.trainer import Job, Sources


def main() -> None:
    args, cfg = pipeline.stage_cli(__doc__, experiment=True)
    exp = cfg.experiment(args.suite, args.method, args.arch, args.seed, ablation_lambda=args.lambda_grad)
    t = exp.train
    rc = relaunch_under_torchrun(t.nproc, sys.argv)  # None: single process, or already a torchrun worker
    if rc is not None:
        sys.exit(rc)
    with distributed_context(t) as dist:
        device = dist.device if dist is not None else pipeline.init_runtime(cfg, args.seed)
        if dist is not None:
            pipeline.init_runtime(cfg, args.seed)
        P = pipeline.paths(cfg)
        d = cfg.suite(args.suite).data
        out_files = [P.model(args.suite, exp.name), P.train_csv(args.suite, exp.name)]
        pretrain = RunInfo("pretrain", suite=args.suite, arch=args.arch).dvc_target
        inputs = [(P.prepared(ds), f"dvc repro download@{ds}") for ds in (d.id.dataset, d.aux.dataset)]
        if t.init == "pretrained":
            inputs.append((P.pretrained(args.suite, args.arch), f"dvc repro {pretrain}"))
        preflight.check(preflight.Needs(outputs=out_files, checkpoint=P.checkpoint(args.suite, exp.name),
                                        inputs=inputs, data_dir=P.data, mlflow=dist is None or dist.is_main))
        sd = pipeline.suite_data(cfg, args.suite, aux=True, ood=False)
        model = pipeline.build_model(cfg, args.suite, args.arch, args.method)
        preflight.check_free_space(out_files, preflight.training_bytes(model, t.optimizer.name))
        if t.init == "pretrained":
            pipeline.load_model(P.pretrained(args.suite, args.arch), model, device, stage=pretrain)
        model = model.to(device)
        sel = P.selection(args.suite, args.arch) / "indices.npy"
        indices = np.load(sel) if sel.exists() else None
        n_aux = len(indices) if indices is not None else len(sd.aux.images)
        B = t.batch_size
        src = pipeline.id_source(sd, cfg, args.suite, batch_size=B, seed=args.seed, device=device)
        aux = pipeline.aux_source(sd, cfg, args.suite, seed=args.seed, device=device, indices=indices,
                                  batch_size=pipeline.candidate_batch_size(t, args.method, len(sd.id_train.images),
                                                                           n_aux))
        if dist is not None:
            model = dist.wrap(model)
        record = RunRecord(
            info=RunInfo.of_experiment("train", exp),
            params={"suite": args.suite, "method": args.method, "arch": args.arch, "seed": args.seed,
                    "group": exp.group, "train": t.model_dump(), "aux_pool": n_aux},
            meta={"suite": args.suite, "method": args.method, "arch": args.arch, "seed": args.seed,
                  "group": exp.group, "experiment": exp.name},
            ckpt_path=P.checkpoint(args.suite, exp.name), out_path=P.model(args.suite, exp.name),
            csv_path=P.train_csv(args.suite, exp.name),
            inputs=pipeline.input_hashes(cfg, [d.id.dataset, d.aux.dataset],
                                         [sel, P.pretrained(args.suite, args.arch)]))
        run_training(cfg, Job(args.method, t, args.seed, channel_std=list(sd.std)), model, Sources(src, aux), record,
                     sd=sd, device=device, distributed=dist)


if __name__ == "__main__":
    pipeline.run_stage(main)
