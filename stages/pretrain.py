"""pretrain_<S>@<arch>: plain cross-entropy training on the ID set (the model GReg fine-tunes)."""
from __future__ import annotations

from greg_ood.run import pipeline, preflight
from greg_ood.run.runinfo import RunInfo
from greg_ood.run.runlog import RunRecord, run_training
from greg_ood.run.trainer import Job, Sources


def main() -> None:
    args, cfg = pipeline.stage_cli(__doc__, arch=True)
    s = cfg.suite(args.suite)
    pc = s.pretrain
    device = pipeline.init_runtime(cfg, pc.seed)
    P = pipeline.paths(cfg)
    out_files = [P.pretrained(args.suite, args.arch), P.pretrain_csv(args.suite, args.arch)]
    preflight.check(preflight.Needs(outputs=out_files, checkpoint=P.pretrain_checkpoint(args.suite, args.arch),
                                    inputs=[(P.prepared(s.data.id.dataset), f"dvc repro download@{s.data.id.dataset}")],
                                    data_dir=P.data))
    sd = pipeline.suite_data(cfg, args.suite, aux=False, ood=False)
    model = pipeline.build_model(cfg, args.suite, args.arch, "ce").to(device)
    preflight.check_free_space(out_files, preflight.training_bytes(model, pc.optimizer.name))
    src = pipeline.id_source(sd, cfg, args.suite, batch_size=pc.batch_size, seed=pc.seed, device=device)
    record = RunRecord(
        info=RunInfo("pretrain", suite=args.suite, arch=args.arch, method="ce", seed=pc.seed),
        params={"suite": args.suite, "arch": args.arch, "pretrain": pc.model_dump()},
        meta={"suite": args.suite, "arch": args.arch, "method": "ce", "num_classes": s.num_classes},
        ckpt_path=P.pretrain_checkpoint(args.suite, args.arch), out_path=P.pretrained(args.suite, args.arch),
        csv_path=P.pretrain_csv(args.suite, args.arch), inputs=pipeline.input_hashes(cfg, [s.data.id.dataset]))
    run_training(cfg, Job("ce", pc, pc.seed), model, Sources(src), record, sd=sd, device=device)


if __name__ == "__main__":
    pipeline.run_stage(main)
