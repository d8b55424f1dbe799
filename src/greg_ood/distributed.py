"""Multi-process training under ``torchrun`` (DistributedDataParallel); a no-op in a plain single process.

Every rank builds the same *global* batch (the data sources are deterministic functions of seed/epoch/step) and keeps
its contiguous share of rows, so the global batch composition is identical to the 1-process run. Gradients are
averaged by DDP; rank 0 alone logs, checkpoints and writes outs.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
import torch.distributed as dist


class Context:
    def __init__(self, sync_batchnorm: bool = False):
        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
            backend = "nccl"
        else:
            self.device = torch.device("cpu")
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        self.sync_batchnorm = sync_batchnorm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _part(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if t is None:
            return None
        n = t.shape[0]
        if n % self.world:
            raise ValueError(f"a global batch of {n} rows cannot be split evenly over {self.world} processes; "
                             "choose batch sizes divisible by train.nproc")
        b = n // self.world
        return t[self.rank * b:(self.rank + 1) * b]

    def shard(self, x_id, y_id, x_aux, roles):
        return self._part(x_id), self._part(y_id), self._part(x_aux), self._part(roles)


@contextlib.contextmanager
def distributed_context(tcfg) -> Iterator[Optional[Context]]:
    """A :class:`Context` when launched by torchrun with WORLD_SIZE > 1, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    ctx = Context(sync_batchnorm=getattr(tcfg, "sync_batchnorm", False))
    try:
        yield ctx
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
