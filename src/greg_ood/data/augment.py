"""Batched, on-device image transforms (no per-sample PIL, no Python loop over samples).

Random draws always come from a CPU ``torch.Generator`` and are moved to the images' device afterwards, so the same
seed gives the same crops and flips on CPU and GPU.
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes, platforms and Python versions)."""
    h = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def generator(*parts) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 N×C×H×W (0..255) -> float32 ``(x/255 - mean) / std`` per channel. Float input is taken as already
    scaled to [0, 1]. ``mean``/``std`` of length 1 apply to every channel."""
    c = x.shape[1]
    m = torch.as_tensor(list(mean), dtype=torch.float32, device=x.device)
    s = torch.as_tensor(list(std), dtype=torch.float32, device=x.device)
    if m.numel() not in (1, c) or s.numel() not in (1, c):
        raise ValueError(f"mean/std have {m.numel()}/{s.numel()} values for {c}-channel images")
    if torch.any(s <= 0):
        raise ValueError(f"std must be positive, got {list(std)}")
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return (xf - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)


def crop_flip_params(n: int, padding: int, flip: bool, generator: Optional[torch.Generator]):
    """Offsets (dy, dx) in [0, 2·padding] and a flip mask for ``n`` images, drawn in that order."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    fl = (torch.rand(n, generator=generator) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, fl


def apply_crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, fl: torch.Tensor,
                    padding: int) -> torch.Tensor:
    """Zero-pad every image by ``padding``, take the H×W window at (dy, dx), mirror left-right where ``fl``."""
    n, c, h, w = x.shape
    dev = x.device
    dy, dx, fl = dy.to(dev), dx.to(dev), fl.to(dev)
    xp = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    rows = dy[:, None] + torch.arange(h, device=dev)[None, :]  # n×h
    cols = dx[:, None] + torch.arange(w, device=dev)[None, :]  # n×w
    cols = torch.where(fl[:, None], cols.flip(1), cols)
    bi = torch.arange(n, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """RandomCrop(H, padding, zero fill) + RandomHorizontalFlip(0.5) on a batch N×C×H×W (any dtype)."""
    if padding < 0:
        raise ValueError("padding must be >= 0")
    if padding == 0 and not flip:
        return x
    dy, dx, fl = crop_flip_params(x.shape[0], padding, flip, generator)
    return apply_crop_flip(x, dy, dx, fl, padding)
