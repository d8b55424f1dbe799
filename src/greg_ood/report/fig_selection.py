"""Figure of the auxiliary-subset selection (the select stage): energies of the pool vs the kept samples, cluster
sizes and a grid of kept images."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .plotting import figure, save

def _image_grid(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        return a  # already one image (H×W or H×W×C)
    if a.ndim == 3:
        a = a[..., None]  # N×H×W gray
    if a.ndim != 4:
        raise ValueError(f"plot_selection: images must be N×H×W[×C] or one H×W[×C] grid, got shape {a.shape}")
    n, h, w, c = a.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, dtype=a.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = a[i]
    return grid


def plot_selection(energy_all, energy_kept, cluster_sizes, images_grid_uint8, path: os.PathLike | str, *,
                   title: str = "GReg+ energy-based sampling") -> Path:
    """Three panels: energy histogram of all auxiliary samples vs the kept ones (shared bins), the cluster sizes
    (bar chart), and an image grid of kept samples (an N×H×W[×C] uint8 batch, or a ready H×W[×C] grid)."""
    ea = np.asarray(energy_all, float).ravel()
    ek = np.asarray(energy_kept, float).ravel()
    ea, ek = ea[np.isfinite(ea)], ek[np.isfinite(ek)]
    sizes = np.asarray(cluster_sizes).ravel()
    grid = _image_grid(images_grid_uint8)
    fig, axes = figure(1, 3, w=4.4)
    both = np.concatenate([ea, ek])
    edges = np.histogram_bin_edges(both, bins="auto") if both.size and np.ptp(both) > 0 else 10
    if not np.isscalar(edges) and len(edges) > 101:
        edges = np.linspace(both.min(), both.max(), 101)
    axes[0].hist(ea, bins=edges, alpha=0.5, label=f"all auxiliary (n={ea.size})")
    axes[0].hist(ek, bins=edges, alpha=0.7, label=f"kept (n={ek.size})")
    axes[0].set(title="energy of auxiliary samples", xlabel="energy E (low = ID-like)", ylabel="count")
    axes[0].legend(fontsize=7)
    axes[1].bar(np.arange(sizes.size), sizes, color="tab:green")
    axes[1].set(title=f"cluster sizes (k = {sizes.size})", xlabel="cluster", ylabel="samples")
    from matplotlib.ticker import MaxNLocator
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if grid.ndim == 3 and grid.shape[-1] == 1:
        grid = grid[..., 0]
    axes[2].imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    axes[2].set(title="kept samples")
    axes[2].axis("off")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


