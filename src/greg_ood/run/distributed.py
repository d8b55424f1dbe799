"""Multi-process training under ``torchrun`` (DistributedDataParallel); a no-op in a plain single process.

Every rank builds the same *global* batch (the data sources are deterministic functions of seed/epoch/step) and keeps
its contiguous share of rows, so the global batch composition is identical to the 1-process run. For the clustering
methods (GReg+, DOS) each rank keeps its share of the *candidate* batch and runs the energy-based sampling on those
candidates alone (selecting its share of the auxiliary rows). Gradients are averaged by DDP; rank 0 alone logs,
checkpoints and writes outs.

:func:`relaunch_under_torchrun` lets a stage start itself again under ``python -m torch.distributed.run`` when the
configuration asks for more than one process (``train.nproc``); see ``docs/scale-out.md``.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from typing import Callable, Iterator, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

#: extra torchrun flags (rendezvous for several nodes); when set they replace ``--standalone``
TORCHRUN_ARGS_ENV = "GREG_OOD_TORCHRUN_ARGS"


class Context:
    """The process group of one torchrun worker: rank, world size, device, and the helpers the trainer needs."""

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
        """True on rank 0, the only rank that logs, checkpoints and writes outputs."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP-wrap ``model`` (converting BatchNorm to SyncBatchNorm first when ``sync_batchnorm``)."""
        if self.sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def part(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """This rank's contiguous share of the rows of a global batch (raises unless they split evenly)."""
        if t is None:
            return None
        n = t.shape[0]
        if n % self.world:
            raise ValueError(f"a global batch of {n} rows cannot be split evenly over {self.world} processes; "
                             "choose batch sizes (and the candidate batch) divisible by train.nproc")
        b = n // self.world
        return t[self.rank * b:(self.rank + 1) * b]

    def rank_loss(self, loss):
        """The :class:`~greg_ood.methods.MethodLoss` for one rank's share of the batch, such that the DDP average of
        the per-rank gradients equals the gradient of the loss on the global batch.

        Cross-entropy, L_S and the ``per_sample`` penalty are means over groups that split evenly, so they average
        exactly. The ``official`` penalty is not a mean of per-row terms: its rows are weighted by 1/n_in and
        1/n_out *and* averaged over N, so on a share of 1/W of the rows it comes out W times larger. Dividing
        ``lambda_grad`` by W restores the global-batch objective (:meth:`mean_logs` rescales the logged value).

        Raises ``ValueError`` for ``sync_batchnorm`` with a gradient penalty: SyncBatchNorm's backward is built from
        ``batch_norm_backward_reduce`` / ``batch_norm_backward_elemt``, which have no derivative, so the double
        backward of the penalty cannot pass through it.
        """
        if self.sync_batchnorm and loss.penalty_on:
            raise ValueError("train.sync_batchnorm: SyncBatchNorm does not support double backward, which the "
                             f"gradient penalty of {loss.method.name!r} needs; keep per-rank BatchNorm "
                             "(sync_batchnorm: false) or set lambda_grad: 0")
        if loss.cfg.reduction == "official" and self.world > 1:
            return loss.with_lambda_grad(loss.cfg.lambda_grad / self.world)
        return loss

    def mean_logs(self, logs: dict, loss=None) -> dict:
        """Average the scalar log values over the ranks (a collective: call it on every rank at the same step).

        ``total``, ``ce``, ``energy`` and ``active_frac`` then equal the global-batch values; the ``official``
        penalty ``grad`` is divided by W (see :meth:`rank_loss`). ``gradnorm_*`` become means of per-rank means,
        ``active_frac_id`` / ``active_frac_aux`` global shares (the ranks hold equal row counts), and the energy
        percentiles means of per-rank percentiles.
        Non-finite entries (NaN when a group has no active row) are averaged over the ranks where they are finite.
        """
        keys = [k for k, v in logs.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
        if not keys or self.world == 1:
            return logs
        vals = torch.stack([logs[k].detach().reshape(()).to(torch.float64) for k in keys])
        finite = torch.isfinite(vals)
        buf = torch.cat([torch.where(finite, vals, torch.zeros_like(vals)), finite.to(torch.float64)]).to(self.device)
        dist.all_reduce(buf)
        s, n = buf[:len(keys)].cpu(), buf[len(keys):].cpu()
        mean = torch.where(n > 0, s / n.clamp_min(1), torch.full_like(s, float("nan")))
        out = dict(logs)
        for i, k in enumerate(keys):
            v = mean[i]
            if k == "grad" and loss is not None and loss.cfg.reduction == "official":
                v = v / self.world
            out[k] = v.to(logs[k].dtype if logs[k].is_floating_point() else torch.float32)
        return out

    def check_same(self, value, what: str) -> None:
        """Raise on every rank unless all ranks hold the same ``value`` (a collective; e.g. the resume position,
        which differs when some ranks cannot see rank 0's checkpoint file)."""
        values = [None] * self.world
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise RuntimeError(f"{what} differs between ranks: {values}; on several nodes the checkpoint folder "
                               "must be on storage every node shares")

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()


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


# ------------------------------------------------------------------------------------------------ self-relaunch
def torchrun_command(nproc: int, argv: Sequence[str], extra_args: Optional[str] = None,
                     executable: Optional[str] = None) -> list[str]:
    """The command that runs ``argv`` (script path + its arguments) under torchrun with ``nproc`` processes per node.

    ``extra_args`` (a shell-quoted string, normally from ``$GREG_OOD_TORCHRUN_ARGS``) replaces ``--standalone``, e.g.
    ``--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint host:29500`` for two nodes; when it names
    ``--nproc-per-node`` itself, that value wins over ``nproc``.
    """
    if int(nproc) < 1:
        raise ValueError(f"nproc: must be >= 1, got {nproc}")
    if not argv:
        raise ValueError("argv: needs at least the script path")
    flags = shlex.split(extra_args) if extra_args and extra_args.strip() else ["--standalone"]
    if not any(f.split("=")[0] in ("--nproc-per-node", "--nproc_per_node") for f in flags):
        flags += ["--nproc-per-node", str(int(nproc))]
    return [executable or sys.executable, "-m", "torch.distributed.run", *flags, *[str(a) for a in argv]]


def _run_forwarding_signals(cmd: Sequence[str]) -> int:
    """Run ``cmd`` and wait for it; SIGTERM/SIGINT received meanwhile are passed on to it (e.g. ``dvc queue kill``).
    Returns its exit status (128 + signal number when it died from a signal, as a shell reports it)."""
    proc = subprocess.Popen(list(cmd))
    forwarded = (signal.SIGTERM, signal.SIGINT)
    previous = {}

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    try:
        for s in forwarded:
            previous[s] = signal.signal(s, forward)
    except ValueError:  # not the main thread: no handlers, plain wait
        previous = {}
    try:
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 - rc if rc < 0 else rc


def relaunch_under_torchrun(nproc: int, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
                            runner: Optional[Callable[[list[str]], int]] = None) -> Optional[int]:
    """Re-execute ``argv`` under torchrun when ``nproc > 1`` and this process is not a torchrun worker already.

    Returns ``None`` when nothing was launched (``nproc <= 1``, or ``WORLD_SIZE`` is set: we are a worker), in which
    case the caller goes on in-process; otherwise the launched command's exit status, which the caller should exit
    with and do nothing else. ``env`` defaults to ``os.environ`` (``GREG_OOD_TORCHRUN_ARGS`` is read from it);
    ``runner`` (for tests) runs the command list and returns its status.
    """
    env = os.environ if env is None else env
    if int(nproc) <= 1 or "WORLD_SIZE" in env:
        return None
    cmd = torchrun_command(nproc, argv, env.get(TORCHRUN_ARGS_ENV))
    return (runner or _run_forwarding_signals)(cmd)
