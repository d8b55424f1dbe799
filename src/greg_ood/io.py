"""Atomic writers: a file is either the old complete version or the new complete version, never partial."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)


def write_json_atomic(path, obj, indent: int = 1) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, default=_default)
        f.flush()
        os.fsync(f.fileno())
    _replace(tmp, path)


def write_npz_atomic(path, arrays: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    _replace(tmp, path)


def _default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
