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

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from .. import methods as M
from .. import registry
from ..data.augment import derive_seed
from .errors import UserError
from .runguard import StageKilled, stop_requested
from .runtime import load_checkpoint, save_atomic
from .config import LossCfg, PretrainCfg, TrainCfg

LogFn = Callable[[dict[str, float], int], None]


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is left intact."""


# ------------------------------------------------------------------------------------------------------- utilities
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


def _all_reduce_sum(t: torch.Tensor) -> None:
    """Sum ``t`` in place over the DDP ranks."""
    torch.distributed.all_reduce(t)


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


@dataclass(frozen=True)
class Job:
    """What one :class:`Trainer` trains: a registry method, its validated settings (``TrainCfg``, or ``PretrainCfg``
    for ``ce``), the seed of every random choice, and the per-channel std of the input normalisation (needed by
    ``loss.grad_space="pixel"`` only)."""

    method: str
    cfg: Union[TrainCfg, PretrainCfg]
    seed: int
    channel_std: Optional[Sequence[float]] = None

    @property
    def entry(self) -> registry.Method:
        return registry.get(self.method)

    def loss(self) -> M.MethodLoss:
        """The step's loss, built once from the registry entry and the validated loss settings (CE pretraining has
        none: the ``LossCfg`` defaults, which its single term does not read)."""
        cfg = self.cfg.loss if isinstance(self.cfg, TrainCfg) else LossCfg()
        return M.MethodLoss(self.entry, cfg, self.channel_std)


@dataclass(frozen=True)
class Sources:
    """Where the batches come from. ``id`` yields normalised ID batches ``(x, y)`` via ``iter_epoch(epoch,
    start_step)``; ``aux`` (methods with auxiliary data) gives batches via ``batch(epoch, step)`` with its own batch
    size: B_aux rows for random methods, C candidates for the clustering methods, which then select 1 (or 2,
    two-way) per cluster."""

    id: Any
    aux: Any = None


@dataclass(frozen=True)
class Hooks:
    """The run's callbacks, all optional: ``log(row, step)`` every ``log_every`` steps and at the end of each epoch;
    ``epoch_end(epoch, logs)`` returns extra values to log (e.g. the ID test accuracy); ``on_save()`` right after each
    checkpoint; ``progress(global_step, total_steps)`` after every step (a progress bar)."""

    log: Optional[LogFn] = None
    log_every: int = 10
    epoch_end: Optional[Callable[[int, dict], dict]] = None
    on_save: Optional[Callable[[], None]] = None
    progress: Optional[Callable[[int, int], None]] = None


class Trainer:
    """Runs one :class:`Job` (a method's training, or CE pretraining with ``method='ce'``) on :class:`Sources`.

    Checkpointing: ``ckpt_path`` (None: none), ``config_hash`` (a checkpoint with another hash is not resumed) and
    ``extra_state`` (saved inside each checkpoint, restored on resume). ``distributed``: a
    :class:`greg_ood.run.distributed.Context` or None.
    """

    def __init__(self, model: torch.nn.Module, job: Job, sources: Sources, *, device: torch.device,
                 hooks: Hooks = Hooks(), ckpt_path: Optional[Path] = None, config_hash: str = "",
                 extra_state: Optional[dict] = None, distributed=None, resume: bool = True):
        self.model = model
        self.resume = resume  # False: never continue from ckpt_path (the caller decided to start over)
        self.job = job
        self.method = job.method
        self.cfg = job.cfg
        self.id_source = sources.id
        self.aux_source = sources.aux
        self.device = device
        self.seed = job.seed
        self.ckpt_path = Path(ckpt_path) if ckpt_path else None
        self.config_hash = config_hash
        self.log = hooks.log or (lambda m, s: None)
        self.log_every = hooks.log_every
        self.epoch_end = hooks.epoch_end
        self.extra_state = dict(extra_state or {})
        self.dist = distributed  # greg_ood.run.distributed.Context or None
        self.on_save = hooks.on_save
        self.progress = hooks.progress
        self.steps_per_epoch = sources.id.steps_per_epoch
        cfg = job.cfg
        if getattr(cfg, "steps_per_epoch", None):
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.steps_per_epoch)
        if self.steps_per_epoch <= 0:
            raise ValueError("the ID training set is smaller than one batch: lower batch_size")
        self.optimizer = build_optimizer(model, cfg.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(cfg.schedule, cfg.optimizer.lr, self.steps_per_epoch, cfg.epochs))
        self.loss = job.loss()
        if distributed is not None:  # per-rank share of the global-batch objective (official penalty: lambda / W)
            self.loss = distributed.rank_loss(self.loss)
        self.uses_aux = job.entry.aux
        if self.uses_aux and sources.aux is None:
            raise ValueError(f"method {job.method!r} needs auxiliary outliers but Sources.aux is None")
        self.selector = None  # a stateful selector (registry ``Method.selector``), its state saved in checkpoints
        if job.entry.selector is not None:
            self.selector = M.make_selector(job.entry, cfg, _all_reduce_sum if distributed is not None else None)
        self.global_step = 0
        self._last_components: dict = {}

    # ---- checkpoint
    def state(self, epoch: int, step: int) -> dict:
        model = self.model.module if hasattr(self.model, "module") else self.model
        return {"model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch, "step": step,
                "global_step": self.global_step, "config_hash": self.config_hash, "method": self.method,
                "rng": _rng_state(), "extra": self.extra_state,
                "selector": self.selector.state_dict() if self.selector is not None else {}}

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
        """After a SIGTERM/SIGINT (see :func:`greg_ood.run.runguard.graceful_stop`): save the position reached, then
        raise :class:`~greg_ood.run.runguard.StageKilled`. Single-process only: under DDP the ranks could see the signal
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
        if self.selector is not None:
            self.selector.load_state_dict(ck.get("selector", {}))
        loaded = dict(ck.get("extra", {}))
        loaded.pop("history", None)  # the caller restored the metric log from this checkpoint; keep its live list
        self.extra_state.update(loaded)
        return int(ck["epoch"]), int(ck["step"])

    # ---- auxiliary batch of one step
    def aux_batch(self, epoch: int, step: int, n_id: int, x_id: Optional[torch.Tensor] = None):
        """Auxiliary rows for this step (and their roles for split routing); virtual aux epochs wrap the pool.

        Under DDP (``n_id`` is then this rank's ID share) the rank keeps its share of the global auxiliary or
        candidate batch; the clustering methods run the energy-based sampling on the rank's own candidates, with a
        sampler stream of their own per rank (rank 0's equals the single-process stream). A stateful selector also
        reads the step's ID rows ``x_id`` (POEM fits its posterior on their features)."""
        src = self.aux_source
        g_index = epoch * self.steps_per_epoch + step
        aux_epoch, aux_step = divmod(g_index, src.steps_per_epoch)
        x_aux = src.batch(aux_epoch, aux_step)
        x_aux = x_aux[0] if isinstance(x_aux, (tuple, list)) else x_aux
        if self.dist is not None:
            x_aux = self.dist.part(x_aux)
        selection = self.job.entry.selection
        if selection is None and self.selector is None:
            return x_aux, None
        s = self.cfg.sampling
        rank = self.dist.rank if self.dist is not None else 0
        gen = step_generator(self.seed, "sample" if rank == 0 else f"sample.rank{rank}", epoch, step, x_aux.device)
        model = self.model.module if hasattr(self.model, "module") else self.model
        if self.selector is not None:
            if x_id is None:
                raise ValueError(f"x_id: method {self.method!r} selects with the step's ID rows; pass them")
            idx, roles = self.selector.select(model, x_aux, x_id, n_id, epoch=epoch, generator=gen)
            return x_aux[idx], roles
        idx, roles = M.select_auxiliary(
            model, x_aux, n_id, n_clusters=s.n_clusters, start=s.start, stop=s.stop, normalization=s.normalization,
            n_init=s.n_init, two_way=s.two_way, generator=gen,
            score=selection.score, return_roles=True)
        roles = roles if self.loss.cfg.routing == "split" else None
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
                        x_aux, roles = self.aux_batch(epoch, step, x_id.shape[0], x_id)
                    except ValueError as e:
                        if "nan" not in str(e).lower() and "inf" not in str(e).lower():
                            raise
                        self._check_weights(epoch, step)
                        raise NonFiniteLossError(f"non-finite candidate scores at epoch {epoch} step {step}: {e}; "
                                                 f"last step's components: {self._last_components}. The last good "
                                                 f"checkpoint ({self.ckpt_path}) is intact; lower the learning rate "
                                                 "or lambda_grad.") from None
                else:
                    x_aux, roles = None, None
                log_now = (self.global_step + 1) % self.log_every == 0 or step == self.steps_per_epoch - 1
                loss, logs = M.training_step(model, x_id, y_id, x_aux, self.loss, aux_roles=roles,
                                             diagnostics=log_now)
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
                if log_now:
                    if self.dist is not None:  # collective (same step on every rank): global-batch values
                        logs = self.dist.mean_logs(logs, self.loss)
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
        from ..gradnorm import energy_grad_norms

        model = self.model.module if hasattr(self.model, "module") else self.model
        g_id = energy_grad_norms(model, x_id)
        g_aux = energy_grad_norms(model, x_aux)
        return {"monitor_gradnorm_id": float(g_id.mean()), "monitor_gradnorm_aux": float(g_aux.mean())}


def _is_number(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() == 1
    return isinstance(v, (int, float)) and not isinstance(v, bool)
