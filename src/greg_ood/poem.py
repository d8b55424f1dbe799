"""POEM's outlier mining (Ming, Fan & Li, ICML 2022): a Bayesian linear model on the penultimate features and
Thompson sampling from its posterior (docs/method.md §4.1).

The model regresses an "OOD-ness" target on the features z: ``y = wᵀz + noise``, with ``y = +t`` for outliers and
``y = -t`` for ID rows, a Gaussian prior ``w ~ N(0, σ I)`` and noise variance σ_n. Each step draws one weight vector
from the posterior, scores the candidate outliers by ``wᵀz`` and keeps the ``n`` whose score is closest to 0 (the
sampled decision boundary): the outliers the current model finds hardest to tell from ID data. The features of the
kept outliers and of the step's ID rows then enter the posterior.

The posterior is kept as its sufficient statistics ``Σ zzᵀ`` and ``Σ z y`` per epoch, over the last ``buffer_epochs``
epochs (the official buffer ``BUF_SIZE``); the mean and the Cholesky factor are solved from them on the training
device at each step (torch only, no host round-trip). All randomness comes from the step's generator, and
:meth:`PoemSelector.state_dict` holds everything else, so a resumed run continues bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch

from .settings import PoemCfg
from .scores import eval_no_grad

__all__ = ["Posterior", "blr_posterior", "thompson_scores", "closest_to_boundary", "PoemSelector"]


class Posterior(NamedTuple):
    """``N(mean, scale · A⁻¹)`` with ``A = chol cholᵀ`` the posterior precision (see :func:`blr_posterior`)."""

    mean: torch.Tensor
    chol: torch.Tensor
    scale: float


def blr_posterior(zz: torch.Tensor, zy: torch.Tensor, prior_var: float, noise_var: float) -> Posterior:
    """The posterior of Bayesian linear regression from its sufficient statistics ``zz = Σ z zᵀ``, ``zy = Σ z y``.

    ``A = zz / σ_n + I / σ``, ``mean = A⁻¹ zy / σ_n`` (the closed form, POEM paper §4.1, Eq. 5), covariance
    ``σ · A⁻¹``: the official code (``neural_linear_opt.py``, ``update_bays_reg_BDQN``) scales the closed-form
    covariance ``A⁻¹`` by the prior variance σ, which widens the exploration; we keep that. Float64 throughout.
    """
    d = zz.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=zz.device)
    precision = zz.double() / noise_var + eye / prior_var
    chol = torch.linalg.cholesky_ex(precision).L  # positive definite by construction; no error check, no sync
    mean = torch.cholesky_solve((zy.double() / noise_var).unsqueeze(1), chol).squeeze(1)
    return Posterior(mean, chol, prior_var)


def thompson_scores(z: torch.Tensor, post: Posterior, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Scores ``wᵀz`` of the rows of ``z`` under one draw ``w ~ N(mean, scale · A⁻¹)`` (Thompson sampling, POEM §4.2).

    ``w = mean + √scale · L⁻ᵀ ε`` with ``ε ~ N(0, I)`` from ``generator`` and ``A = L Lᵀ``: ``Cov(L⁻ᵀ ε) = A⁻¹``.
    """
    eps = torch.randn(post.mean.shape[0], 1, dtype=torch.float64, device=post.mean.device, generator=generator)
    w = post.mean + math.sqrt(post.scale) * torch.linalg.solve_triangular(post.chol.mT, eps, upper=True).squeeze(1)
    return z.double() @ w


def closest_to_boundary(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` rows with the smallest ``|score|``, closest first (official ``select_ood_opt``:
    ``topk(|output|, largest=False)``)."""
    if not 0 < n <= scores.shape[0]:
        raise ValueError(f"n_select: must be in 1..{scores.shape[0]} (the candidate count), got {n}")
    return torch.topk(scores.abs(), n, largest=False, sorted=True).indices


class PoemSelector:
    """POEM's per-step selection with its posterior as state (the trainer saves :meth:`state_dict` in checkpoints).

    ``reduce`` (optional) sums a tensor in place over the DDP ranks, so that every rank fits the same posterior on
    the features of all ranks.
    """

    def __init__(self, cfg: PoemCfg, reduce: Optional[Callable[[torch.Tensor], None]] = None):
        self.cfg = cfg
        self.reduce = reduce
        self.zz: Optional[torch.Tensor] = None  # [buffer_epochs, D, D] float64
        self.zy: Optional[torch.Tensor] = None  # [buffer_epochs, D] float64
        self.slot_epoch = [-1] * cfg.buffer_epochs  # the epoch each slot holds (host list: no device read)

    def posterior(self) -> Posterior:
        """The posterior fitted on the buffer's statistics (the prior while they are all zero)."""
        if self.zz is None:
            raise ValueError("posterior: no features seen yet (the feature dimension is taken from the first step)")
        return blr_posterior(self.zz.sum(0), self.zy.sum(0), self.cfg.prior_var, self.cfg.noise_var)

    def _slot(self, epoch: int, d: int, device: torch.device) -> int:
        """The buffer slot of ``epoch``, emptied when it held an older epoch (the buffer keeps the last epochs)."""
        n = self.cfg.buffer_epochs
        if self.zz is None:
            self.zz = torch.zeros(n, d, d, dtype=torch.float64, device=device)
            self.zy = torch.zeros(n, d, dtype=torch.float64, device=device)
        if self.zz.shape[-1] != d:
            raise ValueError(f"features: the posterior is {self.zz.shape[-1]}-dimensional, the model gives {d}")
        slot = epoch % n
        if self.slot_epoch[slot] != epoch:
            self.zz[slot].zero_()
            self.zy[slot].zero_()
            self.slot_epoch[slot] = epoch
        return slot

    def update(self, epoch: int, z_out: torch.Tensor, z_in: torch.Tensor) -> None:
        """Add the features of the kept outliers (target +t) and of the ID rows (target -t) to ``epoch``'s slot."""
        z = torch.cat([z_out, z_in]).double()
        t = self.cfg.target
        y = torch.cat([torch.full((z_out.shape[0],), t, dtype=torch.float64, device=z.device),
                       torch.full((z_in.shape[0],), -t, dtype=torch.float64, device=z.device)])
        zz, zy = z.T @ z, z.T @ y
        if self.reduce is not None:
            self.reduce(zz)
            self.reduce(zy)
        slot = self._slot(epoch, z.shape[1], z.device)
        self.zz[slot] += zz
        self.zy[slot] += zy

    def select(self, model: torch.nn.Module, candidates: torch.Tensor, x_id: torch.Tensor, n_select: int, *,
               epoch: int, generator: Optional[torch.Generator] = None):
        """Indices of the ``n_select`` candidates kept this step, and ``None`` roles (one role for every row).

        The model computes the penultimate features of the candidates and the ID rows in **eval** mode under
        ``torch.inference_mode`` (its mode is restored). Scoring uses the posterior of the data before this step;
        the kept outliers and the ID rows then update it.
        """
        if candidates.dim() < 2 or candidates.shape[0] == 0:
            raise ValueError(f"candidates: expected a non-empty batch, got shape {tuple(candidates.shape)}")
        z = eval_no_grad(model, lambda m: m.features(torch.cat([candidates, x_id]))).double()
        z_cand, z_in = z[:candidates.shape[0]], z[candidates.shape[0]:]
        self._slot(epoch, z.shape[1], z.device)
        idx = closest_to_boundary(thompson_scores(z_cand, self.posterior(), generator), n_select)
        self.update(epoch, z_cand[idx], z_in)
        return idx, None

    def state_dict(self) -> dict:
        """The buffer's statistics and the epoch of each slot (empty before the first step)."""
        if self.zz is None:
            return {}
        return {"zz": self.zz.clone(), "zy": self.zy.clone(), "slot_epoch": torch.tensor(self.slot_epoch)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (an empty one restores the prior)."""
        if not state:
            self.zz = self.zy = None
            self.slot_epoch = [-1] * self.cfg.buffer_epochs
            return
        if state["zz"].shape[0] != self.cfg.buffer_epochs:
            raise ValueError(f"poem state: {state['zz'].shape[0]} buffer slots, poem.buffer_epochs is "
                             f"{self.cfg.buffer_epochs}")
        self.zz, self.zy = state["zz"].double().clone(), state["zy"].double().clone()
        self.slot_epoch = [int(e) for e in state["slot_epoch"].tolist()]
