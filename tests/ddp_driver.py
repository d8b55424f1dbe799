"""Driver for the multi-process tests: trains a tiny classifier with :class:`greg_ood.run.trainer.Trainer` on synthetic,
deterministic batches, in one process (plain ``python``) or under ``torchrun`` (DDP on gloo), and saves what rank 0
sees (per-step logged losses, final weights) for comparison.

usage: python ddp_driver.py OUT.pt JOB [JOB ...]
  JOB = method:norm[:resume]   method greg | greg_plus | poem,  norm gn (GroupNorm: rank-independent) | bn (per-rank BN)
  ``resume``: interrupt after the first checkpoint, then continue from it with fresh model/optimiser objects (every
  rank loads rank 0's file).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from greg_ood import models, registry
from greg_ood.run.config import LossCfg, OptimizerCfg, PoemCfg, SamplingCfg, ScheduleCfg, TrainCfg
from greg_ood.run.distributed import distributed_context
from greg_ood.run.runtime import set_determinism
from greg_ood.run.trainer import Hooks, Job, Sources, Trainer, derive_seed

K = 4          # classes
B = 8          # global ID batch
B_AUX = 8      # global auxiliary batch (greg)
C = 32         # global candidate batch (greg_plus, poem): each rank selects 8 of its 16
STEPS = 5
SEED = 3


class IDSource:
    """Deterministic ID batches: a pure function of (seed, epoch, step), the same on every rank."""

    steps_per_epoch = STEPS

    def iter_epoch(self, epoch: int, start: int = 0):
        """Yield ``(x, y)`` global batches from ``start`` to the end of the epoch."""
        for step in range(start, self.steps_per_epoch):
            g = torch.Generator().manual_seed(derive_seed(SEED, "id", epoch, step))
            y = torch.randint(0, K, (B,), generator=g)
            x = torch.randn(B, 1, 8, 8, generator=g) + 0.5 * y.view(-1, 1, 1, 1).float()
            yield x, y


class AuxSource:
    """Deterministic auxiliary (or candidate) batches of ``n`` rows."""

    steps_per_epoch = STEPS

    def __init__(self, n: int):
        self.n = n

    def batch(self, epoch: int, step: int) -> torch.Tensor:
        """The global auxiliary batch of ``(epoch, step)``."""
        g = torch.Generator().manual_seed(derive_seed(SEED, "aux", epoch, step))
        return 1.5 * torch.randn(self.n, 1, 8, 8, generator=g) - 0.5


def build_model(norm: str) -> nn.Module:
    """The tiny SmallCNN of the tests; ``norm="gn"`` swaps its BatchNorms for GroupNorm (no cross-row coupling)."""
    torch.manual_seed(SEED)
    m = models.build("small_cnn", K, in_channels=1, widths=(4, 8, 8))
    if norm == "gn":
        for name in ("bn1", "bn2", "bn3"):
            setattr(m, name, nn.GroupNorm(2, getattr(m, name).num_features))
    return m


def train_cfg(method: str, checkpoint_every: int = 100) -> TrainCfg:
    """A short GReg / GReg+ configuration with margins that leave both ID and aux rows active at initialisation."""
    return TrainCfg(
        epochs=1, steps_per_epoch=STEPS, batch_size=B, checkpoint_every=checkpoint_every, gradnorm_every=0,
        optimizer=OptimizerCfg(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4),
        schedule=ScheduleCfg(name="cosine"),
        loss=LossCfg(lambda_energy=0.1, lambda_grad=100.0, m_in=-1.45, m_out=-1.35),
        sampling=SamplingCfg(candidate_batch=C, n_clusters=4, n_init=1, two_way=True),
        poem=PoemCfg() if registry.get(method).selector is not None else None)


class Interrupt(Exception):
    """Raised from the save hook to simulate a kill right after a checkpoint."""


def run_job(method: str, norm: str, dist=None, resume: bool = False, ckpt_dir: Path | None = None) -> dict:
    """Train one job; returns ``{"rows": [(step, logs)], "state": final weights}`` (meaningful on rank 0)."""
    set_determinism(SEED, deterministic=True, num_threads=1)
    rows: list = []

    def make(cfg):
        model = build_model(norm)
        if dist is not None:
            model = dist.wrap(model)
        aux = AuxSource(C if registry.get(method).selects else B_AUX)
        return Trainer(model, Job(method, cfg, SEED), Sources(IDSource(), aux), device=torch.device("cpu"),
                       hooks=Hooks(log=lambda r, s: rows.append((s, dict(r))), log_every=1),
                       ckpt_path=(ckpt_dir / f"{method}-{norm}.pt") if ckpt_dir else None, distributed=dist)

    if not resume:
        tr = make(train_cfg(method))
        tr.fit()
    else:
        tr = make(train_cfg(method, checkpoint_every=2))
        saves = []

        def stop():
            saves.append(1)
            raise Interrupt

        tr.on_save = stop
        try:
            tr.fit()
        except Interrupt:
            pass
        rows = [r for r in rows if r[0] <= 2]  # what the checkpoint covers
        tr = make(train_cfg(method, checkpoint_every=2))
        assert tr.try_resume() == (0, 2), "every rank must find rank 0's checkpoint"
        tr.global_step = 0  # fit() resumes again by itself
        tr.fit()
    bare = tr.model.module if hasattr(tr.model, "module") else tr.model
    return {"rows": rows, "state": {k: v.detach().clone() for k, v in bare.state_dict().items()},
            "selector": tr.selector.state_dict() if tr.selector is not None else {}}


def main() -> None:
    """Run the jobs named on the command line; rank 0 (or the single process) saves the results to OUT."""
    out, jobs = Path(sys.argv[1]), sys.argv[2:]
    with distributed_context(train_cfg("greg")) as dist, tempfile.TemporaryDirectory() as tmp:
        results = {}
        for job in jobs:
            method, norm, *flag = job.split(":")
            ckpt_dir = None
            if flag == ["resume"]:
                ckpt_dir = Path(tmp) if dist is None or dist.is_main else None
                # all ranks must use the same directory: rank 0 broadcasts its path
                if dist is not None:
                    import torch.distributed as tdist
                    box = [str(ckpt_dir) if ckpt_dir else None]
                    tdist.broadcast_object_list(box, src=0)
                    ckpt_dir = Path(box[0])
            results[job] = run_job(method, norm, dist, resume=flag == ["resume"], ckpt_dir=ckpt_dir)
        if dist is None or dist.is_main:
            torch.save(results, out)


if __name__ == "__main__":
    main()
