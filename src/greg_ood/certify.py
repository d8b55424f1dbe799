"""Input-gradient norms of the energy and first-order robustness radii (the paper's Lipschitz argument,
docs/method.md §2.6).

Paper statement (as paraphrased by secondary sources): if the score S is L-Lipschitz on an eps-ball around x and x is
detected ID (S(x) < γ), the decision is constant on radius ``min(eps, (γ - S(x)) / L)``; likewise for OOD points with
``(S(x) - γ) / L``. Here S = E (the energy), γ = the energy threshold that keeps ``tpr`` of the ID test set, and L is
**estimated** by the local gradient norm ``||∇_x E(x)||_2``. The radius is therefore a first-order estimate, not a
certificate. It lives in the space the gradient was taken in (normalised input unless ``grad_space="pixel"``) and is
an L2 radius (the dual of the L2 gradient norm).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .scores import energy as energy_of

__all__ = ["energy_grad_norms", "certified_radius", "threshold_at_tpr"]


def energy_grad_norms(model: torch.nn.Module, x: torch.Tensor, *, grad_space: str = "normalized",
                      channel_std: Optional[Union[Sequence[float], torch.Tensor]] = None, batch_size: int = 256,
                      temperature: float = 1.0) -> torch.Tensor:
    """Per-sample ``||∇_x E(x)||_2`` (flattened input, L2) with the model in **eval** mode (mode restored afterwards),
    so every row is a true per-sample gradient. ``grad_space="pixel"`` divides channel c by ``channel_std[c]`` (the
    gradient w.r.t. the [0, 1] pixel input). Processes ``batch_size`` rows at a time; works inside ``no_grad`` /
    ``inference_mode`` contexts; parameter ``.grad`` fields are not touched. Returns a detached [N] tensor."""
    if grad_space not in ("normalized", "pixel"):
        raise ValueError(f"grad_space: must be 'normalized' or 'pixel', got {grad_space!r}")
    if x.dim() < 2:
        raise ValueError(f"x: expected a batch [N, ...], got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    std = None
    if grad_space == "pixel":
        if channel_std is None:
            raise ValueError("channel_std: grad_space='pixel' needs the per-channel std of the input normalisation")
        std = torch.as_tensor(channel_std, dtype=torch.float32).flatten()
        if std.numel() not in (1, x.shape[1]) or not bool((std > 0).all()):
            raise ValueError(f"channel_std: needs 1 or {x.shape[1]} positive values, got {std.tolist()}")
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for s in range(0, x.shape[0], batch_size):
                xb = x[s:s + batch_size].detach().clone().requires_grad_(True)
                e = energy_of(model(xb), temperature)
                (g,) = torch.autograd.grad(e.sum(), xb)
                if std is not None:
                    sv = std.to(g.device, g.dtype)
                    g = g / (sv.view(1, -1, *([1] * (g.dim() - 2))) if sv.numel() > 1 else sv)
                out.append(torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).detach())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0)
    return torch.cat(out)


def threshold_at_tpr(energy_id, tpr: float = 0.95) -> float:
    """Energy threshold γ keeping a fraction ``tpr`` of ID samples: the ``ceil(tpr * n)``-th smallest ID energy, so that
    at least ``tpr`` of the ID set has ``E <= γ`` (detected ID: ``E <= γ``; the score ``-E >= -γ``)."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr: must be in (0, 1], got {tpr}")
    e = np.sort(np.asarray(torch.as_tensor(energy_id).detach().double().cpu()).reshape(-1))
    if e.size == 0:
        raise ValueError("energy_id: is empty")
    if not np.all(np.isfinite(e)):
        raise ValueError("energy_id: contains NaN or inf")
    k = min(max(int(math.ceil(tpr * e.size - 1e-9)), 1), e.size)
    return float(e[k - 1])


def certified_radius(energy, grad_norm, gamma: float, eps: Optional[float] = None) -> torch.Tensor:
    """First-order radius of the detection decision at threshold γ (docs/method.md §2.6), per sample:

        detected ID  (E <= γ):  min(eps, (γ - E) / ||∇E||)
        detected OOD (E >  γ):  min(eps, (E - γ) / ||∇E||)

    The Lipschitz bound is assumed only on the eps-ball, so both sides are capped at ``eps`` (``None`` = no cap).
    A zero gradient norm gives ``eps`` (or inf without a cap); a point exactly at γ gets 0.
    """
    e = torch.as_tensor(energy).detach().double().reshape(-1)
    g = torch.as_tensor(grad_norm).detach().double().reshape(-1).to(e.device)
    if e.shape != g.shape:
        raise ValueError(f"grad_norm: has {g.numel()} values but energy has {e.numel()}")
    if not bool(torch.isfinite(e).all()):
        raise ValueError("energy: contains NaN or inf")
    if bool((g < 0).any()) or not bool(torch.isfinite(g).all()):
        raise ValueError("grad_norm: must be finite and >= 0")
    if eps is not None and not eps > 0:
        raise ValueError(f"eps: must be > 0 or None, got {eps}")
    margin = (float(gamma) - e).abs()
    r = torch.where(g > 0, margin / torch.where(g > 0, g, torch.ones_like(g)),
                    torch.where(margin > 0, torch.full_like(margin, float("inf")), torch.zeros_like(margin)))
    if eps is not None:
        r = r.clamp(max=float(eps))
    return r.float()
