"""ImageNet benchmark: the user's local ILSVRC2012 copy -> file lists (never downloaded, never redistributed), and
the ImageNet OOD sets (MOS iNaturalist/SUN/Places, DTD) as seeded 1000-image file lists.

ID classes (the official code's rule): sort the 1000 wnids; ``perm = RandomState(1993).permutation(1000)``; the wnid at sorted
position v gets index ``perm[v]``; the K classes with index < K are ID with that index as label. The aux pool is the
training images of every other class.
"""
from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from .images import extract_archive, list_image_files
from .build import BuildContext

log = logging.getLogger("greg_ood.data")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES_CHOICES = (10, 20, 50, 100)
PERMUTATION_SEED = 1993
ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")

LAYOUT_HELP = """\
point datasets.imagenet.imagenet_root at a local ILSVRC2012 copy, in one of two layouts:
  (a) extracted:  <root>/train/<wnid>/*.JPEG   and   <root>/val/<wnid>/*.JPEG   (val/val/<wnid>/ also accepted)
  (b) archives:   <root>/ILSVRC2012_img_train.tar (138 GB, md5 1d675b47d978889d74fa0da5fadfb00e)
                  <root>/ILSVRC2012_img_val.tar   (6.3 GB, md5 29b22e2961454d5413ddabcf34fc5622)
                  <root>/ILSVRC2012_devkit_t12.tar.gz (md5 fa75699e90414af021442c21a62c3abf)
      (unpacked once with torchvision's ImageNet parsers into datasets.imagenet.extract_dir,
       default <data_dir>/raw/imagenet)
ImageNet is never downloaded by this project: obtain it from image-net.org under its terms."""


def _resource(name: str) -> dict:
    return json.loads(resources.files("greg_ood").joinpath("resources", name).read_text())


@lru_cache(maxsize=None)
def sorted_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC2012 wnids in sorted order (shipped list)."""
    return tuple(_resource("imagenet_wnids.json")["wnids"])


@lru_cache(maxsize=None)
def shipped_id_classes() -> tuple[str, ...]:
    """The 100 ID wnids of the official code, in label order (shipped list)."""
    return tuple(_resource("imagenet_classes.json")["wnids"])


def class_indices(wnids=None, seed: int = PERMUTATION_SEED) -> dict[str, int]:
    """wnid -> index by the permutation rule over the sorted wnids."""
    w = sorted(wnids if wnids is not None else sorted_wnids())
    perm = np.random.RandomState(seed).permutation(len(w))
    return {wn: int(perm[v]) for v, wn in enumerate(w)}


def id_classes(num_classes: int) -> list[str]:
    """The ID wnids in label order (0..K-1)."""
    if num_classes not in NUM_CLASSES_CHOICES:
        raise ValueError(f"datasets.imagenet.num_classes must be one of {NUM_CLASSES_CHOICES}, not {num_classes!r}")
    return list(shipped_id_classes()[:num_classes])


def _is_wnid(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def _class_dirs(d: Path) -> dict[str, Path]:
    if not d.is_dir():
        return {}
    return {e.name: Path(e.path) for e in os.scandir(d) if e.is_dir() and _is_wnid(e.name)}


def locate(root, extract_dir: Optional[Path] = None) -> tuple[Path, Path]:
    """(train_dir, val_dir) holding ``<wnid>/`` folders; unpacks the three archives first where only they exist."""
    if root in (None, ""):
        raise FileNotFoundError("datasets.imagenet.imagenet_root is not set.\n" + LAYOUT_HELP)
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise FileNotFoundError(f"imagenet_root {root} does not exist.\n" + LAYOUT_HELP)
    for base in (root, extract_dir):
        if base is None:
            continue
        train = Path(base) / "train"
        for val in (Path(base) / "val", Path(base) / "val" / "val"):
            if _class_dirs(train) and _class_dirs(val):
                return train, val
    present = [a for a in ARCHIVES if (root / a).is_file()]
    if len(present) == len(ARCHIVES):
        return _unpack_archives(root, Path(extract_dir) if extract_dir else root)
    found = sorted(p.name for p in root.iterdir())[:20]
    missing = [a for a in ARCHIVES if a not in present]
    raise FileNotFoundError(f"imagenet_root {root}: neither train/<wnid>/ + val/<wnid>/ folders nor all three "
                            f"archives (missing {missing}); it contains {found}.\n" + LAYOUT_HELP)


def _unpack_archives(root: Path, dest: Path) -> tuple[Path, Path]:
    """torchvision's ImageNet parsers (md5 check, extraction, val images sorted into wnid folders)."""
    from .._torchvision_compat import import_torchvision

    tvi = import_torchvision().datasets.imagenet
    dest.mkdir(parents=True, exist_ok=True)
    for a in ARCHIVES:
        if not (dest / a).exists():
            os.symlink(root / a, dest / a)
    log.info("unpacking the ILSVRC2012 archives into %s (once; verifies md5 first)", dest)
    if not (dest / "meta.bin").exists():
        tvi.parse_devkit_archive(str(dest))
    if not _class_dirs(dest / "val"):
        tvi.parse_val_archive(str(dest))
    if not _class_dirs(dest / "train"):
        tvi.parse_train_archive(str(dest))
    wnid_to_classes, _ = tvi.load_meta_file(str(dest))
    if sorted(wnid_to_classes) != list(sorted_wnids()):
        raise ValueError("the devkit's 1000 wnids differ from the shipped sorted list (resources/imagenet_wnids.json)")
    return dest / "train", dest / "val"


def _list_class(d: Path, empty: Optional[list] = None) -> list[str]:
    """Sorted file names of one class folder; zero-byte files (an interrupted copy or extraction) are left out and
    appended to ``empty`` as paths."""
    out = []
    for e in os.scandir(d):
        if not e.is_file() or e.name.startswith("."):
            continue
        if e.stat().st_size == 0:
            if empty is not None:
                empty.append(Path(e.path))
            continue
        out.append(e.name)
    return sorted(out)


def _warn_empty(ctx: BuildContext, empty: list) -> None:
    """Report zero-byte image files by name (they are not in the file lists)."""
    if not empty:
        return
    empty = sorted(str(p) for p in empty)
    shown = ", ".join(empty[:20]) + (f" and {len(empty) - 20} more" if len(empty) > 20 else "")
    ctx.warn(f"{len(empty)} empty (0-byte) image files left out of the file lists: {shown}; "
             f"re-copy or re-extract them and prepare again to include them")
    ctx.manifest["empty_files_skipped"] = empty


def build_imagenet(ctx: BuildContext) -> None:
    o = ctx.options
    k = int(o["num_classes"])
    ids = id_classes(k)
    extract = Path(o["extract_dir"]) if o.get("extract_dir") else ctx.data_dir / "raw" / "imagenet"
    train_dir, val_dir = locate(o["imagenet_root"], extract)
    tr_classes, va_classes = _class_dirs(train_dir), _class_dirs(val_dir)
    missing = [w for w in ids if w not in tr_classes or w not in va_classes]
    if missing:
        raise FileNotFoundError(f"{train_dir.parent}: ID class folders missing in train/ or val/: {missing}.\n"
                                + LAYOUT_HELP)
    index = class_indices()
    unknown = sorted(set(tr_classes) - set(index))
    if unknown:
        ctx.warn(f"{len(unknown)} train folders are not ILSVRC2012 classes and are ignored: {unknown[:5]}")
    if len(tr_classes) != 1000:
        ctx.warn(f"train/ has {len(tr_classes)} class folders, 1000 expected; the aux pool uses those present")
    root = train_dir.parent
    names = [f"{w}" for w in ids]

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    empty: list[Path] = []
    for split, cdirs in (("train", tr_classes), ("val", va_classes)):
        files, labels = [], []
        for lab, w in enumerate(ids):
            for f in _list_class(cdirs[w], empty):
                files.append(rel(cdirs[w] / f))
                labels.append(lab)
        ctx.write_files(split, root, files, labels, names, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        stats="ImageNet constants (not computed)")
    aux_files, aux_cls = [], []
    for w in sorted(tr_classes):
        if w in ids or w not in index:
            continue
        for f in _list_class(tr_classes[w], empty):
            aux_files.append(rel(tr_classes[w] / f))
            aux_cls.append(index[w])
    ctx.write_files("aux", root, aux_files, None, (), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    stats="ImageNet constants (not computed)", aux_classes=len(set(aux_cls)),
                    aux_index_range=[k, 999])
    _warn_empty(ctx, empty)
    ctx.manifest["id_wnids"] = ids
    ctx.manifest["class_rule"] = f"RandomState({PERMUTATION_SEED}).permutation(1000) over sorted wnids; index < {k}"


def build_mos(ctx: BuildContext) -> None:
    """An ImageNet OOD set: unpack the archive once under raw/, pick ``count`` images with ``seed``."""
    (src,) = ctx.spec.sources
    path = ctx.fetch(src.filename)
    stem = src.filename.split(".")[0]
    root = extract_archive(path, ctx.raw_dir / f"{stem}.extracted")
    files = list_image_files(root)
    if ctx.spec.raw_group == "dtd":
        files = [f for f in files if f.startswith("dtd/images/")]
    empty = [root / f for f in files if os.path.getsize(root / f) == 0]
    if empty:
        _warn_empty(ctx, empty)
        files = [f for f in files if os.path.getsize(root / f) > 0]
    if not files:
        raise ValueError(f"{path}: no images in the archive")
    count, seed = int(ctx.options["count"]), int(ctx.options["seed"])
    if count <= 0:
        raise ValueError(f"datasets.{ctx.name}.count must be positive")
    if count > len(files):
        ctx.warn(f"count {count} exceeds the {len(files)} images; using all")
        count = len(files)
    idx = np.sort(np.random.RandomState(seed).choice(len(files), count, replace=False))
    ctx.write_files("test", root, [files[i] for i in idx], None, (), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    pool_size=len(files), subset_seed=seed, stats="ImageNet constants (not computed)")
