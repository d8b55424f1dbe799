"""The architectures, each declared once: its name in ``params.yaml``, its name in tables and figures, its place in
the tables (the order below), and the keyword options its constructor takes (what ``arch_options.<arch>`` may set).

The constructors are in :mod:`greg_ood.models` (``models.build(name, ...)``), which checks at import that it builds
exactly these names; a test checks that the options listed here are its constructors' keyword options. This module
imports nothing, so validating ``params.yaml`` does not load the models.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    #: name in tables and figures
    display: str
    #: keyword options of the constructor (``arch_options.<arch>`` in params.yaml)
    options: tuple[str, ...] = ()


#: every architecture, in table order
ARCHS: dict[str, Arch] = {
    "small_cnn": Arch("Small CNN", ("widths",)),
    "resnet18": Arch("ResNet-18", ("stem",)),
    "wrn40_2": Arch("WRN-40-2", ("depth", "widen_factor", "dropout")),
    "densenet100": Arch("DenseNet-100", ("depth", "growth_rate", "reduction", "dropout")),
    # the paper's / official code's name for DenseNet-BC-100
    "densenet101": Arch("DenseNet-101", ("depth", "growth_rate", "reduction", "dropout")),
    "densenet121": Arch("DenseNet-121", ("memory_efficient",)),
}
NAMES = tuple(ARCHS)
