"""Converters for the CIFAR benchmark: CIFAR-10/100, TI-300K, and the OOD test sets at 32×32."""
from __future__ import annotations

import logging
import pickle
import tarfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .images import iter_archive_images, list_archive_images, open_image, transform_32
from .build import BuildContext

log = logging.getLogger("greg_ood.data")

# md5 of the archive members (torchvision), checked when the archive is the official one
_CIFAR_MEMBERS = {
    "c58f30108f718f92721af3b95e74349a": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
    "eb9058c3a382ffc7106e4002c42a8d85": {
        "train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48"},
}


def _tar_members(path: Path, wanted: Sequence[str]) -> dict[str, bytes]:
    """Members of a tar archive by base name (the archives hold one top folder)."""
    out: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            base = m.name.rsplit("/", 1)[-1]
            if m.isfile() and base in wanted:
                f = tar.extractfile(m)
                out[base] = f.read() if f is not None else b""
    missing = [w for w in wanted if w not in out]
    if missing:
        raise ValueError(f"{path}: archive lacks {missing}; is it the right file?")
    return out


def _unpickle(data: bytes, what: str) -> dict:
    # the archive was checksum-verified before this point
    d = pickle.loads(data, encoding="latin1")
    if not isinstance(d, dict) or (what != "meta" and "data" not in d):
        raise ValueError(f"{what}: not a CIFAR batch")
    return d


def _planar_to_hwc(data) -> np.ndarray:
    a = np.asarray(data, dtype=np.uint8)
    if a.ndim != 2 or a.shape[1] != 3072:
        raise ValueError(f"CIFAR batch data has shape {a.shape}, expected N×3072")
    return np.ascontiguousarray(a.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _check_members(ctx: BuildContext, filename: str, members: dict[str, bytes]) -> None:
    import hashlib

    ref = _CIFAR_MEMBERS.get(ctx.source(filename).md5 or "")
    if not ref:
        return
    for k, want in ref.items():
        got = hashlib.md5(members[k]).hexdigest()
        if got != want:
            raise ValueError(f"{filename}: member {k} has md5 {got}, expected {want}")


def build_cifar10(ctx: BuildContext) -> None:
    fn = "cifar-10-python.tar.gz"
    path = ctx.fetch(fn)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    m = _tar_members(path, names)
    _check_members(ctx, fn, m)
    classes = list(_unpickle(m["batches.meta"], "meta")["label_names"])
    tr = [_unpickle(m[f"data_batch_{i}"], f"data_batch_{i}") for i in range(1, 6)]
    te = _unpickle(m["test_batch"], "test_batch")
    ctx.write_split("train", np.concatenate([_planar_to_hwc(b["data"]) for b in tr]),
                    np.concatenate([np.asarray(b["labels"]) for b in tr]), classes)
    ctx.write_split("test", _planar_to_hwc(te["data"]), np.asarray(te["labels"]), classes)


def build_cifar100(ctx: BuildContext) -> None:
    fn = "cifar-100-python.tar.gz"
    path = ctx.fetch(fn)
    m = _tar_members(path, ["train", "test", "meta"])
    _check_members(ctx, fn, m)
    meta = _unpickle(m["meta"], "meta")
    classes = list(meta["fine_label_names"])
    for split in ("train", "test"):
        b = _unpickle(m[split], split)
        ctx.write_split(split, _planar_to_hwc(b["data"]), np.asarray(b["fine_labels"]), classes,
                        coarse_label_names=list(meta.get("coarse_label_names", [])))


def build_ti300k(ctx: BuildContext) -> None:
    path = ctx.fetch("300K_random_images.npy")
    a = np.load(path, mmap_mode="r")
    if a.dtype != np.uint8 or a.ndim != 4:
        raise ValueError(f"{path}: expected uint8 N×32×32×3, got {a.dtype} {a.shape}")
    if a.shape[1:] == (32, 32, 3) and a.flags.c_contiguous:
        ctx.adopt_split("train", path)  # already the prepared format: hard link, no 900 MB copy
    elif a.shape[1:] == (3, 32, 32):
        out = np.lib.format.open_memmap(ctx.out_dir / "train.tmp.npy", mode="w+", dtype=np.uint8,
                                        shape=(a.shape[0], 32, 32, 3))
        for i in range(0, len(a), 20000):
            out[i:i + 20000] = np.asarray(a[i:i + 20000]).transpose(0, 2, 3, 1)
        out.flush()
        del out
        tmp = ctx.out_dir / "train.tmp.npy"
        ctx.adopt_split("train", tmp)
        tmp.unlink()
    else:
        raise ValueError(f"{path}: expected uint8 N×32×32×3, got {a.dtype} {a.shape}")


def build_svhn(ctx: BuildContext) -> None:
    import scipy.io

    path = ctx.fetch("test_32x32.mat")
    mat = scipy.io.loadmat(path)
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise ValueError(f"{path}: X has shape {x.shape}, expected 32×32×3×N with N = len(y) = {len(y)}")
    images = np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(3, 0, 1, 2))
    ctx.write_split("test", images, y.astype(np.int64) % 10, [str(d) for d in range(10)])


# ----------------------------------------------------------------------------------------------------- image folders
def _convert_archive(ctx: BuildContext, path: Path, rule: str, *, prefix: Optional[str] = None,
                     names: Optional[Sequence[str]] = None) -> tuple[list[str], np.ndarray, int]:
    """Decode the image members (all, or ``names``) of an archive with a 32×32 rule, ordered by member name
    (or by ``names``). Returns (names, images, count of images needing the resize fallback)."""
    wanted = set(names) if names is not None else None
    got: dict[str, np.ndarray] = {}
    fallback = 0
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names) if names is not None else None, desc=f"{ctx.name}: decode", unit="img",
                   leave=False, mininterval=1.0)
    try:
        for n, data in iter_archive_images(path, prefix=prefix, wanted=wanted):
            try:
                im = open_image(data)
            except Exception as e:  # noqa: BLE001 -- a broken member is reported, not fatal
                ctx.warn(f"{n}: cannot be decoded ({type(e).__name__}: {e}); skipped")
                continue
            arr, fb = transform_32(im, rule)
            got[n] = arr
            fallback += int(fb)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not got:
        raise ValueError(f"{path}: no images found{f' under {prefix!r}' if prefix else ''}")
    order = [n for n in names if n in got] if names is not None else sorted(got)
    if names is not None and len(order) != len(names):
        ctx.warn(f"{len(names) - len(order)} of the selected files were missing or undecodable")
    if fallback:
        ctx.warn(f"{fallback} images were not the size the rule {rule!r} expects; Resize(32)+CenterCrop(32) "
                 f"was applied to them")
    return order, np.stack([got[n] for n in order]), fallback


def _folder_set(ctx: BuildContext, filename: str, rule: str) -> None:
    path = ctx.fetch(filename)
    names, images, fb = _convert_archive(ctx, path, rule)
    ctx.write_split("test", images, None, (), rule=rule, resized_fallback=fb,
                    folders=sorted({n.rsplit("/", 1)[0] for n in names if "/" in n}))


def build_lsun_crop(ctx: BuildContext) -> None:
    _folder_set(ctx, "LSUN.tar.gz", "crop")


def build_lsun_resize(ctx: BuildContext) -> None:
    _folder_set(ctx, "LSUN_resize.tar.gz", "none")


def build_isun(ctx: BuildContext) -> None:
    _folder_set(ctx, "iSUN.tar.gz", "none")


def build_dtd(ctx: BuildContext) -> None:
    path = ctx.fetch("dtd-r1.0.1.tar.gz")
    names, images, fb = _convert_archive(ctx, path, "resize_crop", prefix="dtd/images/")
    classes = sorted({n.split("/")[2] for n in names})
    labels = np.asarray([classes.index(n.split("/")[2]) for n in names], dtype=np.int64)
    ctx.write_split("test", images, labels, classes, rule="resize_crop")


def build_places365(ctx: BuildContext) -> None:
    src = ctx.options["places_source"]
    if src not in ("val_256", "test_256"):
        raise ValueError(f"datasets.places365.places_source must be 'val_256' or 'test_256', not {src!r}")
    count, seed = int(ctx.options["count"]), int(ctx.options["seed"])
    path = ctx.fetch(f"{src}.tar")
    all_names = sorted(list_archive_images(path))
    if count <= 0:
        raise ValueError("datasets.places365.count must be positive")
    if count > len(all_names):
        ctx.warn(f"count {count} exceeds the {len(all_names)} images of {src}; using all")
        count = len(all_names)
    idx = np.sort(np.random.RandomState(seed).choice(len(all_names), count, replace=False))
    chosen = [all_names[i] for i in idx]
    names, images, _ = _convert_archive(ctx, path, "resize_crop", names=chosen)
    ctx.write_split("test", images, None, (), rule="resize_crop", places_source=src, pool_size=len(all_names),
                    subset_seed=seed, files=names)
