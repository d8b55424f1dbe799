"""The converter of every dataset: ``DatasetSpec.builder`` (``sources.py``) -> the function that builds it.

The converters live in ``mini.py``, ``paper.py``, ``openood_lists.py`` and ``imagenet.py``; they import only :mod:`.build` and know
nothing of this table, which :func:`greg_ood.data.prepare.prepare` reads. Adding a dataset: write its converter,
give its :class:`~greg_ood.data.sources.DatasetSpec` a ``builder`` name, and add the name here.
"""
from __future__ import annotations

from typing import Callable

from . import imagenet, mini, openood_lists, paper
from .build import BuildContext

Builder = Callable[[BuildContext], None]

BUILDERS: dict[str, Builder] = {
    "fashion_mnist": mini.build_fashion_mnist,
    "skimage_crops": mini.build_skimage_crops,
    "textures": mini.build_textures,
    "digits": mini.build_digits,
    "faces": mini.build_faces,
    "gaussian_noise": mini.build_gaussian_noise,
    "uniform_noise": mini.build_uniform_noise,
    "cifar10": paper.build_cifar10,
    "cifar100": paper.build_cifar100,
    "tinyimages300k": paper.build_ti300k,
    "svhn": paper.build_svhn,
    "lsun_crop": paper.build_lsun_crop,
    "lsun_resize": paper.build_lsun_resize,
    "isun": paper.build_isun,
    "dtd": paper.build_dtd,
    "places365": paper.build_places365,
    "tin597": openood_lists.build_tin597,
    "openood_test": openood_lists.build_openood_test,
    "imagenet": imagenet.build_imagenet,
    "mos": imagenet.build_mos,
}
