"""A real training process for the resume tests: GReg+ (clustering + penalty) on small synthetic arrays, through the
same run_training used by the train stage (atomic checkpoints, MLflow SQLite run, CSV curve).

usage: python resume_driver.py WORKDIR [--steps-per-epoch N] [--epochs E] [--slow SECONDS] [--crash-at STEP]
                                [--lr LR]

``--crash-at k`` sends the process SIGKILL inside its k-th training step (counted in this process); ``--lr``
overrides the learning rate (a params change). It runs under ``pipeline.run_stage`` like a stage script.
"""
from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps-per-epoch", type=int, default=12)
    ap.add_argument("--slow", type=float, default=0.0, help="sleep per step (gives the killer room)")
    ap.add_argument("--crash-at", type=int, default=0, help="SIGKILL itself inside this step of this process")
    ap.add_argument("--lr", type=float, default=None)
    args = ap.parse_args()
    wd = Path(args.workdir)
    os.chdir(wd)
    from greg_ood.run import config as C
    from greg_ood import data as D
    from greg_ood import models
    from greg_ood.run import runtime
    from greg_ood import methods as M
    from greg_ood.run.runinfo import RunInfo
    from greg_ood.run.runlog import RunRecord, run_training
    from greg_ood.run.trainer import Job, Sources
    from greg_ood.run.pipeline import SuiteData, setup_logging

    setup_logging()

    if args.slow or args.crash_at:
        orig = M.training_step
        count = [0]

        def slow_step(*a, **k):
            count[0] += 1
            if count[0] == args.crash_at:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(args.slow)
            return orig(*a, **k)
        M.training_step = slow_step

    cfg = C.load(wd / "params.yaml")
    tcfg = cfg.train_cfg("mini", "greg_plus").model_copy(update={
        "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "checkpoint_every": 3, "gradnorm_every": 4})
    if args.lr is not None:
        tcfg = tcfg.model_copy(update={"optimizer": tcfg.optimizer.model_copy(update={"lr": args.lr})})
    runtime.set_determinism(0, True, 1)
    rng = np.random.RandomState(0)
    x_id = rng.randint(0, 256, size=(512, 28, 28, 1)).astype(np.uint8)
    y_id = rng.randint(0, 6, size=512).astype(np.int64)
    x_aux = rng.randint(0, 256, size=(2048, 28, 28, 1)).astype(np.uint8)
    split = D.ArraySplit(images=x_id[:128], labels=y_id[:128], class_names=[str(i) for i in range(6)],
                         mean=[0.5], std=[0.25], name="synthetic", split="test")
    sd = SuiteData(id_train=split, id_test=split, ood={}, aux=None, mean=[0.5], std=[0.25])
    dev = torch.device("cpu")
    src = D.DeviceArraySource(x_id, y_id, batch_size=32, device=dev, mean=[0.5], std=[0.25], crop_padding=2,
                              flip=True, seed=0, stream="id")
    aux = D.DeviceArraySource(x_aux, np.full(len(x_aux), -1), batch_size=96, device=dev, mean=[0.5], std=[0.25],
                              crop_padding=2, flip=True, seed=0, stream="aux")
    model = models.build("small_cnn", 6, in_channels=1)
    record = RunRecord(info=RunInfo("train", suite="mini", method="greg_plus", arch="small_cnn", seed=0),
                       params={"t": tcfg.model_dump()},
                       meta={"test": True}, ckpt_path=wd / "ckpt" / "run.pt", out_path=wd / "out" / "model.pt",
                       csv_path=wd / "out" / "train.csv")
    run_training(cfg, Job("greg_plus", tcfg, 0, channel_std=[0.25]), model, Sources(src, aux), record, sd=sd,
                 device=dev)


if __name__ == "__main__":
    from greg_ood.run.pipeline import run_stage

    run_stage(main)
