"""Datasets built from OpenOOD v1.5's image lists: the TIN-597 auxiliary pool and the OpenOOD test sets of the CIFAR
benchmarks that are not already one of ours (Tiny ImageNet's held-out images, MNIST, OpenOOD's Places365 list).

OpenOOD ships one archive of text lists (``benchmark_imglist.zip``: ``benchmark_imglist/<benchmark>/<list>.txt``) and
one zip of images per dataset (``tin597.zip``, ``tin.zip``, ...), all on Google Drive (``scripts/download/download.py``
of Jingkang50/OpenOOD). A list line is ``<path> <label>``: the path relative to OpenOOD's ``images_classic/`` folder,
then an integer label (or a dict literal for some ID lists; read as label -1). OpenOOD unpacks ``<name>.zip`` into
``images_classic/<name>/``; so that either archive layout works, a list path is matched to a zip member by its full
path or by the path without its first folder.

Every image is decoded as RGB and brought to 32×32 with OpenOOD's CIFAR test transform, Resize(32) (bilinear, shorter
side) then CenterCrop(32): Tiny-ImageNet-style 64×64 images become 32×32, MNIST's 28×28 become 32×32.
"""
from __future__ import annotations

import ast
import re
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .build import BuildContext

#: the benchmarks whose lists a test set is prepared for (one split each)
BENCHMARKS = ("cifar10", "cifar100")

#: dataset name -> (image archive, list file name inside ``benchmark_imglist/<benchmark>/``)
TEST_LISTS = {
    "openood_tin": ("tin.zip", "test_tin.txt"),
    "openood_mnist": ("mnist.zip", "test_mnist.txt"),
    "openood_places365": ("places365.zip", "test_places365.txt"),
}
TIN597_LIST = "train_tin597.txt"
TIN597_CLASSES = 597

_WNID = re.compile(r"^n\d{8}$")


# ----------------------------------------------------------------------------------------------------- list parsing
def parse_imglist(text: str, where: str) -> list[tuple[str, int]]:
    """``[(path, label), ...]`` of an OpenOOD image list, in file order.

    Each non-blank line is ``<path> <extra>``, split at the first space (paths hold no spaces). ``extra`` is an
    integer label, or a dict literal (OpenOOD's multi-label ID lists), read as -1. A line without a label, an
    absolute path, a path with ``..`` or a repeated path raises ``ValueError`` naming ``where`` and the line."""
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split(" ", 1)
        if len(parts) != 2 or not parts[1].strip():
            raise ValueError(f"{where}:{no}: expected '<path> <label>', got {line!r}")
        path, extra = parts[0], parts[1].strip()
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"{where}:{no}: path {path!r} must be relative to images_classic/ (no '/' start, no '..')")
        if path in seen:
            raise ValueError(f"{where}:{no}: path {path!r} is listed twice")
        seen.add(path)
        out.append((path, _label(extra, f"{where}:{no}")))
    if not out:
        raise ValueError(f"{where}: the list is empty")
    return out


def _label(extra: str, where: str) -> int:
    try:
        value = ast.literal_eval(extra)
    except (ValueError, SyntaxError):
        raise ValueError(f"{where}: label {extra!r} is neither an integer nor a dict literal") from None
    if isinstance(value, dict):
        return -1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: label {extra!r} is neither an integer nor a dict literal")
    return int(value)


def read_list(zip_path: Path, benchmark: str, list_name: str) -> list[tuple[str, int]]:
    """The entries of ``benchmark_imglist/<benchmark>/<list_name>`` inside OpenOOD's list archive (found by that
    path's tail, so a re-zipped copy with another top folder works too)."""
    tail = f"{benchmark}/{list_name}"
    with zipfile.ZipFile(zip_path) as z:
        names = [n for n in z.namelist() if n == tail or n.endswith("/" + tail)]
        if not names:
            raise ValueError(f"{zip_path}: no member benchmark_imglist/{tail}; is it OpenOOD's benchmark_imglist.zip?")
        text = z.read(sorted(names, key=len)[0]).decode("utf-8")
    return parse_imglist(text, f"{zip_path.name}:{names[0]}")


def match_members(paths: Sequence[str], members: Sequence[str], where: str) -> list[str]:
    """The archive member of each list path: the path itself, else the path without its first folder (OpenOOD
    unpacks ``<name>.zip`` into ``images_classic/<name>/``). Raises ``ValueError`` naming how many paths (and the
    first few) have no member."""
    have = set(members)
    out, missing = [], []
    for p in paths:
        short = p.split("/", 1)[1] if "/" in p else p
        hit = p if p in have else short if short in have else None
        if hit is None:
            missing.append(p)
        else:
            out.append(hit)
    if missing:
        raise ValueError(f"{where}: {len(missing)} of {len(paths)} listed images are not in the archive, e.g. "
                         f"{missing[:3]}; is the image archive the one the list belongs to?")
    return out


def wnid_of(path: str) -> Optional[str]:
    """The ImageNet class id (``n`` + 8 digits) among a path's folders, else None."""
    return next((part for part in path.split("/")[:-1] if _WNID.match(part)), None)


def class_list(paths: Sequence[str], where: str) -> tuple[list[str], np.ndarray]:
    """(sorted wnids, per-path class index) of TIN-597 list paths; a path without a wnid folder raises."""
    wnids = [wnid_of(p) for p in paths]
    bad = [p for p, w in zip(paths, wnids) if w is None]
    if bad:
        raise ValueError(f"{where}: {len(bad)} paths carry no ImageNet class folder (n########), e.g. {bad[:3]}")
    classes = sorted(set(wnids))
    index = {w: i for i, w in enumerate(classes)}
    return classes, np.asarray([index[w] for w in wnids], dtype=np.int64)


def check_tin597_classes(classes: Sequence[str], imagenet_wnids: Sequence[str]) -> list[str]:
    """Problems (as sentences) of a TIN-597 class list: not 597 classes, or classes outside ImageNet-1K."""
    problems = []
    if len(classes) != TIN597_CLASSES:
        problems.append(f"{len(classes)} classes, {TIN597_CLASSES} expected")
    outside = sorted(set(classes) - set(imagenet_wnids))
    if outside:
        problems.append(f"{len(outside)} classes are not ImageNet-1K classes, e.g. {outside[:3]}")
    return problems


# ----------------------------------------------------------------------------------------------------- converters
def _decode_listed(ctx: BuildContext, images_zip: Path, entries: list[tuple[str, int]], where: str):
    """(images N×32×32×3, labels, member names) of the listed images, in list order."""
    from .images import list_archive_images
    from .paper import _convert_archive

    members = match_members([p for p, _ in entries], list_archive_images(images_zip), where)
    order, images, _ = _convert_archive(ctx, images_zip, "resize_crop", names=members)
    if len(order) != len(members):
        raise ValueError(f"{where}: {len(members) - len(order)} listed images could not be decoded")
    return images, np.asarray([lab for _, lab in entries], dtype=np.int64), members


def build_tin597(ctx: BuildContext) -> None:
    """TIN-597 (auxiliary outliers): the images of ``<benchmark>/train_tin597.txt`` at 32×32, labelled by the
    index of their wnid in the sorted class list (the class list is recorded in the manifest)."""
    from .imagenet import sorted_wnids

    bench = ctx.options["imglist"]
    if bench not in BENCHMARKS:
        raise ValueError(f"datasets.tin597.imglist must be one of {list(BENCHMARKS)}, not {bench!r}")
    entries = read_list(ctx.fetch("benchmark_imglist.zip"), bench, TIN597_LIST)
    where = f"benchmark_imglist/{bench}/{TIN597_LIST}"
    classes, labels = class_list([p for p, _ in entries], where)
    for problem in check_tin597_classes(classes, sorted_wnids()):
        ctx.warn(f"{where}: {problem}")
    images, _, members = _decode_listed(ctx, ctx.fetch("tin597.zip"), entries, where)
    ctx.write_split("train", images, labels, classes, rule="resize_crop", imglist=where, files=members)


def build_openood_test(ctx: BuildContext) -> None:
    """An OpenOOD test set: one split per CIFAR benchmark, the images of ``<benchmark>/<test list>`` at 32×32 with
    the list's labels (OOD lists carry -1)."""
    archive, list_name = TEST_LISTS[ctx.name]
    lists = ctx.fetch("benchmark_imglist.zip")
    images_zip = ctx.fetch(archive)
    for bench in BENCHMARKS:
        where = f"benchmark_imglist/{bench}/{list_name}"
        entries = read_list(lists, bench, list_name)
        images, labels, members = _decode_listed(ctx, images_zip, entries, where)
        ctx.write_split(bench, images, labels, (), rule="resize_crop", imglist=where, files=members)
