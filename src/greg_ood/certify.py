"""Input-gradient norms of the energy (computed in :mod:`greg_ood.gradnorm`, re-exported here) and first-order
robustness radii (the paper's Lipschitz argument, docs/method.md §2.6).

Paper statement (as paraphrased by secondary sources): if the score S is L-Lipschitz on an eps-ball around x and x is
detected ID (S(x) < γ), the decision is constant on radius ``min(eps, (γ - S(x)) / L)``; likewise for OOD points with
``(S(x) - γ) / L``. Here S = E (the energy), γ = the energy threshold that keeps ``tpr`` of the ID test set, and L is
**estimated** by the local gradient norm ``||∇_x E(x)||_2``. The radius is therefore a first-order estimate, not a
certificate. It lives in the space the gradient was taken in (normalised input unless ``grad_space="pixel"``) and is
an L2 radius (the dual of the L2 gradient norm).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from .gradnorm import energy_grad_norms

__all__ = ["energy_grad_norms", "certified_radius", "threshold_at_tpr"]


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
