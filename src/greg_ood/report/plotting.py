"""Shared figure plumbing: an object-oriented matplotlib figure (no pyplot, so the process-wide backend is never
touched), atomic PNG writing, wrapped titles, mean ± std bands and readable log-axis ticks.

matplotlib is imported inside the functions, so importing a figure module costs nothing until a figure is drawn.
"""
from __future__ import annotations

import io
import math
import os
import textwrap
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ..run.io import write_bytes_atomic

def figure(nrows: int, ncols: int, *, w: float = 4.2, h: float = 3.4):
    from matplotlib.figure import Figure  # object-oriented API: no pyplot, no global backend switch
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    return fig, axes


def save(fig, path: os.PathLike | str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return write_bytes_atomic(Path(path), buf.getvalue())


def suptitle(fig, text: str, fontsize: float = 9) -> None:
    """Figure title, each line wrapped to the figure's width (about 15 characters per inch at 9 pt)."""
    width = max(40, int(fig.get_figwidth() * 15 * 9 / fontsize))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")), fontsize=fontsize)


def grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = min(n, max_cols)
    return math.ceil(n / ncols), ncols


def hide_unused(axes, n: int) -> None:
    for ax in axes[n:]:
        ax.set_visible(False)


def conv_title(convention: Optional[str | Mapping]) -> str:
    if convention is None:
        return "score higher = ID; ID = positive class"
    c = convention if isinstance(convention, Mapping) else dict(kv.split("=", 1) for kv in convention.split(";"))
    pos = c.get("positive", "id")
    return f"score higher = ID; {pos.upper()} = positive class, FPR95 rule: {c.get('fpr_rule', '?')}"


def log_ticks(axis, *, numticks: int = 6) -> None:
    """Readable log-scale ticks: labelled major ticks at whole decades only (at most ``numticks``), unlabelled
    minor ticks, so labels never overlap."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter
    axis.set_major_locator(LogLocator(base=10, numticks=numticks))
    axis.set_major_formatter(LogFormatterSciNotation(base=10, labelOnlyBase=True))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 0.1, numticks=100))
    axis.set_minor_formatter(NullFormatter())


def mean_band(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct x: the mean of y, the band mean ± std over the values (ddof=1; zero width for one value), and
    the count. Rows with NaN in x or y are dropped first, so a missing value is never drawn as 0."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    xs = np.unique(x)
    mean = np.array([y[x == v].mean() for v in xs])
    std = np.array([y[x == v].std(ddof=1) if (x == v).sum() > 1 else 0.0 for v in xs])
    count = np.array([(x == v).sum() for v in xs])
    return xs, mean, std, count
