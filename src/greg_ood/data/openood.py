"""The OpenOOD v1.5 evaluation protocol of the CIFAR benchmarks, run beside the paper's (``eval.protocols``).

OpenOOD v1.5 (Zhang et al., 2023; ``openood/evaluation_api/datasets.py`` of Jingkang50/OpenOOD) splits the OOD test
sets of a CIFAR model into two groups and reports each group's unweighted mean:

* CIFAR-10:  near-OOD = CIFAR-100 test, TIN (Tiny ImageNet held-out images);
  far-OOD = MNIST, SVHN, Textures, Places365.
* CIFAR-100: near-OOD = CIFAR-10 test, TIN; far-OOD = the same four.

CIFAR-10/100 test, SVHN test and Textures are the same images as our ``cifar10``/``cifar100``/``svhn``/``dtd``
datasets (OpenOOD's lists hold every image of them) and are reused; TIN, MNIST and Places365 follow OpenOOD's own
image lists (:mod:`greg_ood.data.openood_lists`; one prepared split per benchmark). The ID test set is the suite's.

This module only defines the sets (it is read by the params validation and the dvc.yaml generator);
:mod:`greg_ood.run.openood_eval` computes the metrics and :mod:`greg_ood.report.openood_table` writes the table.
"""
from __future__ import annotations

from dataclasses import dataclass

PAPER, OPENOOD_V1_5 = "paper", "openood_v1_5"
PROTOCOLS = (PAPER, OPENOOD_V1_5)
GROUPS = ("near", "far")


@dataclass(frozen=True)
class ProtocolSet:
    """One OOD test set of a protocol: OpenOOD's name for it, its group, and the prepared (dataset, split)."""

    name: str
    group: str
    dataset: str
    split: str


def _far(bench: str) -> tuple[ProtocolSet, ...]:
    return (ProtocolSet("mnist", "far", "openood_mnist", bench), ProtocolSet("svhn", "far", "svhn", "test"),
            ProtocolSet("texture", "far", "dtd", "test"),
            ProtocolSet("places365", "far", "openood_places365", bench))


#: ID dataset -> the protocol's OOD sets, in OpenOOD's order
OPENOOD_V1_5_SETS: dict[str, tuple[ProtocolSet, ...]] = {
    "cifar10": (ProtocolSet("cifar100", "near", "cifar100", "test"),
                ProtocolSet("tin", "near", "openood_tin", "cifar10"), *_far("cifar10")),
    "cifar100": (ProtocolSet("cifar10", "near", "cifar10", "test"),
                 ProtocolSet("tin", "near", "openood_tin", "cifar100"), *_far("cifar100")),
}


def protocol_sets(id_dataset: str) -> tuple[ProtocolSet, ...]:
    """OpenOOD v1.5's OOD sets for a suite whose ID dataset is ``id_dataset``; ``ValueError`` for other ID sets."""
    if id_dataset not in OPENOOD_V1_5_SETS:
        raise ValueError(f"the openood_v1_5 protocol is defined for the ID datasets {sorted(OPENOOD_V1_5_SETS)}, "
                         f"not {id_dataset!r}")
    return OPENOOD_V1_5_SETS[id_dataset]


def protocol_datasets(suite_cfg) -> list[str]:
    """The prepared datasets the suite's extra protocols read (none when ``eval.protocols`` is ``[paper]``)."""
    if OPENOOD_V1_5 not in suite_cfg.eval.protocols:
        return []
    return sorted({s.dataset for s in protocol_sets(suite_cfg.data.id.dataset)})
