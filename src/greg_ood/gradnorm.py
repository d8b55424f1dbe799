"""The per-sample input-gradient norm of the energy, ``||∇_x E(x)||_2``: the local Lipschitz estimate of the
certified radius (:mod:`greg_ood.certify`) and the training monitor of the trainer (``gradnorm_every``).

Its own module so that the training stages' code (:mod:`greg_ood.run.codedeps`) holds this function and not the rest of
the certification analysis.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .scores import energy as energy_of


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
