"""What every torch stage needs before and after its work, apart from training: the device, deterministic
settings, and weight files (atomic save with a checksum, verified load with ``weights_only=True``, strict loading).

Kept apart from :mod:`greg_ood.run.trainer` so that a stage that only loads a model (select, evaluate, certify) neither
imports the training loop nor lists it among its code deps (:mod:`greg_ood.run.codedeps`).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .io import checked_open, verify_checksum
from .runguard import IntegrityError


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


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` through :func:`greg_ood.run.io.checked_open` (temporary file, fsync, rename, folder fsync), with
    its sha256 recorded in the ``<name>.sha256`` sidecar."""
    with checked_open(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_verified(path: Path, map_location="cpu", *, required: bool = True, fix: str = "") -> dict:
    """:func:`load_checkpoint` after checking the file against its sha256 sidecar (:func:`save_atomic`).

    Raises :class:`~greg_ood.run.runguard.IntegrityError` naming the file, what is wrong and ``fix`` when the checksum
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
