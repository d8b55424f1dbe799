"""Make ``import torchvision`` work next to a CPU-only torch build.

The only torchvision 0.28.0 wheels on the package index are CUDA builds. Their native library ``_C.so`` links against
``libtorch_cuda.so``; on a CPU-only torch it fails to load, and ``torchvision/_meta_registrations.py`` then registers a
fake kernel for ``torchvision::nms`` whose schema was never defined, so ``import torchvision`` raises
``RuntimeError: operator torchvision::nms does not exist``.

:func:`ensure` fixes this *before* torchvision is imported: if the native library loads (every real CUDA install) it
does nothing; otherwise it defines the two missing operator schemas so the import succeeds. Pure-Python parts of
torchvision (models, transforms, datasets, utils) then work; the native ops (``ops.nms``, ``io.decode_image``) raise
clear errors when called. Idempotent and cheap.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

_LIBRARY = None  # keeps the torch.library fragment alive
_DONE = False


def ensure() -> None:
    global _LIBRARY, _DONE
    if _DONE or "torchvision" in sys.modules:
        _DONE = True
        return
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        _DONE = True
        return
    candidates = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")) + glob.glob(
        os.path.join(spec.submodule_search_locations[0], "_C*.pyd")
    )
    for path in candidates:
        try:
            torch.ops.load_library(path)
            _DONE = True
            return  # native ops available: nothing to patch
        except OSError:
            pass
    if not _schema_exists("nms"):
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _DONE = True


def _schema_exists(name: str) -> bool:
    import torch

    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def import_torchvision():
    """Return the ``torchvision`` module, applying :func:`ensure` first."""
    ensure()
    import torchvision

    return torchvision
