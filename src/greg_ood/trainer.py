"""The epoch loop: optimiser + schedule, per-step auxiliary batches (random or energy-based sampling), atomic
checkpoints and exact resume, a NaN guard, and optional DistributedDataParallel.

Determinism / resume. Every random choice in a step is a pure function of ``(seed, stream, epoch, step)``: the data
sources derive their permutations and augmentations that way, and the sampler's generator is seeded from the same
tuple (:func:`step_generator`). A checkpoint therefore only needs the model, optimiser, scheduler, the position
``(epoch, step)`` and the global torch RNG (for anything else that draws from it); a resumed run replays the identical
remaining steps. Checkpoints are written atomically (temporary file, fsync, rename) with a sha256 sidecar, and loaded
with ``weights_only=True``. After SIGTERM/SIGINT (single process) the loop saves the position reached, then stops.

The trainer has no MLflow dependency: it reports through the ``log`` callback given by the stage.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from . import methods as M
from .io import checked_open, verify_checksum
from .runguard import IntegrityError, StageKilled, stop_requested
from .config import CLUSTER_METHODS, TrainCfg, PretrainCfg

LogFn = Callable[[dict[str, float], int], None]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is left intact."""


# ------------------------------------------------------------------------------------------------------- utilities
def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"project.device is {name!r} but CUDA is not available; use device: auto or cpu")
    return torch.device(name)


def set_determinism(seed: int, deterministic: bool = True, num_threads: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)
    if deterministic:
        _deterministic_algorithms()
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` for eager execution.

    The public call also sets ``torch._inductor.config.deterministic``, and importing the inductor costs ~1.3 s per
    stage process (measured on 2 CPU cores). Nothing here uses ``torch.compile``, so we set the eager flag alone
    unless the inductor is already loaded (then the public call is free and also covers compiled code).
    """
    import sys

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple (stable across processes and platforms)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def step_generator(seed: int, stream: str, epoch: int, step: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, stream, epoch, step))
    return g


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_multiplier(cfg, base_lr: float, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The LR multiplier at global step t.

    * ``cosine``: stepped per iteration, from 1 down to ``final_lr / base_lr`` over all steps (energy_ood and the
      official GReg code: ``0.5 * (1 + cos(pi * t / T))`` rescaled to end at 1e-6 / lr).
    * ``step``: multiply by ``gamma`` at each milestone epoch (MultiStepLR, stepped per epoch).
    * ``constant``: 1.
    """
    total = max(1, steps_per_epoch * epochs)
    if cfg.name == "cosine":
        floor = cfg.final_lr / base_lr

        def f(t: int) -> float:
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
        return f
    if cfg.name == "step":
        milestones = list(cfg.milestones)

        def f(t: int) -> float:
            epoch = t // steps_per_epoch
            return cfg.gamma ** sum(epoch >= m for m in milestones)
        return f
    return lambda t: 1.0


# ------------------------------------------------------------------------------------------------------ checkpoint
def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` through :func:`greg_ood.io.checked_open` (temporary file, fsync, rename, folder fsync), with
    its sha256 recorded in the ``<name>.sha256`` sidecar."""
    with checked_open(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_verified(path: Path, map_location="cpu", *, required: bool = True, fix: str = "") -> dict:
    """:func:`load_checkpoint` after checking the file against its sha256 sidecar (:func:`save_atomic`).

    Raises :class:`~greg_ood.runguard.IntegrityError` naming the file, what is wrong and ``fix`` when the checksum
    differs (or is missing while ``required``) or torch cannot read the file."""
    path = Path(path)
    problem = verify_checksum(path, required=required)
    if problem is None:
        try:
            return load_checkpoint(path, map_location=map_location)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same named error
            problem = f"unreadable ({str(e).splitlines()[0][:200]})"
    raise IntegrityError(f"{path}: {problem}" + (f"; {fix}" if fix else ""))


def load_weights(model: torch.nn.Module, state: dict, *, extend_head: bool = True) -> dict[str, list[str]]:
    """Strict load with one explicit exception: a K-output checkpoint into a (K+1)-output model (DOS) copies the K
    rows of the head and keeps the new row's fresh initialisation. Any other mismatch raises, naming the keys."""
    own = model.state_dict()
    state = dict(state)
    extended = []
    for k, v in list(state.items()):
        if k in own and own[k].shape != v.shape:
            if extend_head and v.dim() >= 1 and own[k].shape[1:] == v.shape[1:] and own[k].shape[0] == v.shape[0] + 1:
                new = own[k].clone()
                new[: v.shape[0]] = v
                state[k] = new
                extended.append(k)
            else:
                raise RuntimeError(f"checkpoint tensor {k!r} has shape {tuple(v.shape)}, the model expects "
                                   f"{tuple(own[k].shape)}: wrong architecture or num_classes for this checkpoint")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing keys {missing[:8]}, unexpected keys "
                           f"{unexpected[:8]} (strict loading; the official code's strict=False would hide this)")
    model.load_state_dict(state, strict=True)
    return {"extended": extended}


def _rng_state() -> dict:
    st = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": repr(random.getstate()),
            "numpy_keys": torch.from_numpy(st[1].astype(np.int64)), "numpy_pos": int(st[2])}


def _set_rng_state(s: dict) -> None:
    import ast

    torch.set_rng_state(s["torch"])
    random.setstate(ast.literal_eval(s["python"]))
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))


# ---------------------------------------------------------------------------------------------------------- loop
@dataclass
class FitResult:
    steps: int
    epochs: int
    resumed_from: Optional[tuple[int, int]]
    seconds: float
    last_logs: dict = field(default_factory=dict)


class Trainer:
    """Runs one method's training (or CE pretraining with ``method='ce'``).

    ``id_source`` yields normalised ID batches ``(x, y)`` via ``iter_epoch(epoch, start_step)``; ``aux_source``
    (optional) gives auxiliary batches via ``batch(epoch, step)`` with its own batch size: B_aux rows for random
    methods, C candidates for the clustering methods (dos, greg_plus), which then select 1 (or 2, two-way) per cluster.
    """

    def __init__(self, model: torch.nn.Module, method: str, cfg: TrainCfg | PretrainCfg, *, id_source,
                 aux_source=None, device: torch.device, seed: int, ckpt_path: Optional[Path] = None,
                 config_hash: str = "", channel_std=None, log: Optional[LogFn] = None, log_every: int = 10,
                 epoch_end: Optional[Callable[[int, dict], dict]] = None, extra_state: Optional[dict] = None,
                 distributed=None, on_save: Optional[Callable[[], None]] = None,
                 progress: Optional[Callable[[int, int], None]] = None, resume: bool = True):
        self.model = model
        self.resume = resume  # False: never continue from ckpt_path (the caller decided to start over)
        self.method = method
        self.cfg = cfg
        self.id_source = id_source
        self.aux_source = aux_source
        self.device = device
        self.seed = seed
        self.ckpt_path = Path(ckpt_path) if ckpt_path else None
        self.config_hash = config_hash
        self.log = log or (lambda m, s: None)
        self.log_every = log_every
        self.epoch_end = epoch_end
        self.extra_state = dict(extra_state or {})
        self.dist = distributed  # greg_ood.distributed.Context or None
        self.on_save = on_save
        self.progress = progress  # called as progress(global_step, total_steps) after every step (a progress bar)
        self.steps_per_epoch = id_source.steps_per_epoch
        if getattr(cfg, "steps_per_epoch", None):
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.steps_per_epoch)
        if self.steps_per_epoch <= 0:
            raise ValueError("the ID training set is smaller than one batch: lower batch_size")
        self.optimizer = build_optimizer(model, cfg.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(cfg.schedule, cfg.optimizer.lr, self.steps_per_epoch, cfg.epochs))
        if method == "ce":
            self.params = M.MethodParams(name="ce")
        else:
            L = cfg.loss
            self.params = M.MethodParams(
                name=method, lambda_energy=L.lambda_energy, lambda_grad=L.lambda_grad, m_in=L.m_in, m_out=L.m_out,
                reduction=L.reduction, routing=L.routing, grad_space=L.grad_space, channel_std=channel_std,
                lambda_oe=L.lambda_oe, lambda_abs=L.lambda_abs)
        if distributed is not None:  # per-rank share of the global-batch objective (official penalty: lambda / W)
            self.params = distributed.method_params(self.params)
        self.uses_aux = method != "ce"
        if self.uses_aux and aux_source is None:
            raise ValueError(f"method {method!r} needs auxiliary outliers but no aux_source was given")
        self.global_step = 0
        self._last_components: dict = {}

    # ---- checkpoint
    def state(self, epoch: int, step: int) -> dict:
        model = self.model.module if hasattr(self.model, "module") else self.model
        return {"model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch, "step": step,
                "global_step": self.global_step, "config_hash": self.config_hash, "method": self.method,
                "rng": _rng_state(), "extra": self.extra_state}

    def _check_weights(self, epoch: int, step: int) -> None:
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"model weights became non-finite by epoch {epoch} step {step} (global step {self.global_step}); "
                f"first bad tensors: {bad[:3]}; last step's loss components: {self._last_components}. Not saving: "
                f"the last good checkpoint ({self.ckpt_path}) is intact. Lower the learning rate or lambda_grad.")

    def save(self, epoch: int, step: int) -> None:
        self._check_weights(epoch, step)
        if self.ckpt_path is not None and (self.dist is None or self.dist.is_main):
            save_atomic(self.state(epoch, step), self.ckpt_path)
        if self.dist is not None:
            self.dist.barrier()  # every rank sees the new checkpoint once save() returns
        if self.on_save is not None:
            self.on_save()

    def _stop_if_requested(self, epoch: int, step: int, saved: bool = False) -> None:
        """After a SIGTERM/SIGINT (see :func:`greg_ood.runguard.graceful_stop`): save the position reached, then
        raise :class:`~greg_ood.runguard.StageKilled`. Single-process only: under DDP the ranks could see the signal
        at different steps, so there the signal stops the run at once (the last periodic checkpoint stays)."""
        signum = stop_requested()
        if signum is None or self.dist is not None:
            return
        if not saved:
            self.save(epoch, step)
        raise StageKilled(signum)

    def try_resume(self) -> Optional[tuple[int, int]]:
        if not self.resume or self.ckpt_path is None or not self.ckpt_path.exists():
            return None
        ck = load_checkpoint(self.ckpt_path, map_location=self.device)
        if ck.get("config_hash") != self.config_hash or ck.get("method") != self.method:
            return None  # parameters changed since: start over (the stage logs this)
        model = self.model.module if hasattr(self.model, "module") else self.model
        model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.global_step = int(ck["global_step"])
        _set_rng_state(ck["rng"])
        loaded = dict(ck.get("extra", {}))
        loaded.pop("history", None)  # the caller restored the metric log from this checkpoint; keep its live list
        self.extra_state.update(loaded)
        return int(ck["epoch"]), int(ck["step"])

    # ---- auxiliary batch of one step
    def aux_batch(self, epoch: int, step: int, n_id: int):
        """Auxiliary rows for this step (and their roles for split routing); virtual aux epochs wrap the pool.

        Under DDP (``n_id`` is then this rank's ID share) the rank keeps its share of the global auxiliary or
        candidate batch; the clustering methods run the energy-based sampling on the rank's own candidates, with a
        sampler stream of their own per rank (rank 0's equals the single-process stream)."""
        src = self.aux_source
        g_index = epoch * self.steps_per_epoch + step
        aux_epoch, aux_step = divmod(g_index, src.steps_per_epoch)
        x_aux = src.batch(aux_epoch, aux_step)
        x_aux = x_aux[0] if isinstance(x_aux, (tuple, list)) else x_aux
        if self.dist is not None:
            x_aux = self.dist.part(x_aux)
        if self.method not in CLUSTER_METHODS:
            return x_aux, None
        s = self.cfg.sampling
        rank = self.dist.rank if self.dist is not None else 0
        gen = step_generator(self.seed, "sample" if rank == 0 else f"sample.rank{rank}", epoch, step, x_aux.device)
        model = self.model.module if hasattr(self.model, "module") else self.model
        idx, roles = M.select_auxiliary(
            model, x_aux, n_id, n_clusters=s.n_clusters, start=s.start, stop=s.stop, normalization=s.normalization,
            n_init=s.n_init, two_way=s.two_way, generator=gen,
            score="absent" if self.method == "dos" else "energy", return_roles=True)
        roles = roles if self.params.routing == "split" else None
        return x_aux[idx], roles

    # ---- main loop
    def fit(self) -> FitResult:
        t0 = time.time()
        resumed = self.try_resume()
        if self.dist is not None:
            self.dist.check_same(resumed, "resume position")
        start_epoch, start_step = resumed or (0, 0)
        model = self.model
        model.train()
        logs: dict = {}
        for epoch in range(start_epoch, self.cfg.epochs):
            first = start_step if epoch == start_epoch else 0
            if first >= self.steps_per_epoch:
                continue
            for step, (x_id, y_id) in enumerate(self.id_source.iter_epoch(epoch, first), start=first):
                if step >= self.steps_per_epoch:
                    break
                if self.dist is not None:
                    x_id, y_id = self.dist.part(x_id), self.dist.part(y_id)
                if self.uses_aux:
                    try:
                        x_aux, roles = self.aux_batch(epoch, step, x_id.shape[0])
                    except ValueError as e:
                        if "nan" not in str(e).lower() and "inf" not in str(e).lower():
                            raise
                        self._check_weights(epoch, step)
                        raise NonFiniteLossError(f"non-finite candidate scores at epoch {epoch} step {step}: {e}; "
                                                 f"last step's components: {self._last_components}") from None
                else:
                    x_aux, roles = None, None
                loss, logs = M.training_step(model, x_id, y_id, x_aux, self.params, aux_roles=roles)
                comps = {k: float(v) for k, v in logs.items() if _is_number(v)}
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"non-finite loss {float(loss)} at epoch {epoch} step {step} (global step {self.global_step}); "
                        f"components: {comps}. The last good checkpoint ({self.ckpt_path}) is intact; lower the "
                        "learning rate or lambda_grad, or check the margins m_in/m_out against the model's energies.")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.global_step += 1
                if self.progress is not None:
                    self.progress(self.global_step, self.cfg.epochs * self.steps_per_epoch)
                self._last_components = comps
                if self.global_step % self.log_every == 0 or step == self.steps_per_epoch - 1:
                    if self.dist is not None:  # collective (same step on every rank): global-batch values
                        logs = self.dist.mean_logs(logs, self.params)
                    row = {k: float(v) for k, v in logs.items() if _is_number(v)}
                    row["lr"] = self.optimizer.param_groups[0]["lr"]
                    row["epoch"] = epoch
                    gn_every = getattr(self.cfg, "gradnorm_every", 0)
                    if gn_every and self.global_step % gn_every == 0 and x_aux is not None:
                        row.update(self.monitor_gradnorm(x_id, x_aux))
                    self.log(row, self.global_step)
                done_steps = step + 1
                if self.global_step % self.cfg.checkpoint_every == 0 and done_steps < self.steps_per_epoch:
                    self.save(epoch, done_steps)
                if done_steps < self.steps_per_epoch:
                    self._stop_if_requested(epoch, done_steps)
            epoch_logs: dict = {"epoch": epoch}
            if self.epoch_end is not None:
                epoch_logs.update(self.epoch_end(epoch, epoch_logs) or {})
                model.train()
            self.log({k: v for k, v in epoch_logs.items() if k != "epoch"}, self.global_step)
            self.save(epoch + 1, 0)
            self._stop_if_requested(epoch + 1, 0, saved=True)
        return FitResult(steps=self.global_step, epochs=self.cfg.epochs, resumed_from=resumed,
                         seconds=time.time() - t0, last_logs={k: float(v) for k, v in logs.items() if _is_number(v)})

    def monitor_gradnorm(self, x_id: torch.Tensor, x_aux: torch.Tensor) -> dict[str, float]:
        """True mean ||grad_x E(x)||_2 on this step's ID and auxiliary rows (eval-mode BN; the paper's Figure 3)."""
        from .certify import energy_grad_norms

        model = self.model.module if hasattr(self.model, "module") else self.model
        g_id = energy_grad_norms(model, x_id)
        g_aux = energy_grad_norms(model, x_aux)
        return {"monitor_gradnorm_id": float(g_id.mean()), "monitor_gradnorm_aux": float(g_aux.mean())}


def _is_number(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() == 1
    return isinstance(v, (int, float)) and not isinstance(v, bool)
