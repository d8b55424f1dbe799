"""prepare(): download -> verify -> convert -> ``data/prepared/<name>/``; load_split(): read it back, checked.

Prepared layout (docs/CONTRACTS.md)::

    data/prepared/<name>/<split>.images.npy    uint8 N×H×W×C
    data/prepared/<name>/<split>.labels.npy    int64 N (-1 = no label)
    data/prepared/<name>/<split>.files.json    file-list sets (ImageNet scale) instead of the two arrays
    data/prepared/<name>/manifest.json

A dataset is built in a temporary sibling folder and swapped in only when complete, so a folder named
``prepared/<name>`` is never a half-written one. A prepared copy whose manifest matches the requested options and
whose files pass the fast check is reused as it is.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import pickle
import re
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..run.io import remove_stale_dirs, write_json_atomic
from ..run.errors import UserError
from .build import BuildContext, channel_stats, probe_hash, sha256_file
from .registry import BUILDERS
from .sources import DATASETS, DatasetSpec, Source, resolve_options, source_override, DOWNLOAD_OPTIONS

log = logging.getLogger("greg_ood.data")

FORMAT_VERSION = 1


class PreparedDataError(UserError, RuntimeError):
    """The prepared copy of a dataset is missing, incomplete or was changed after preparation."""


# ----------------------------------------------------------------------------------------------------- splits
@dataclass
class ArraySplit:
    """One prepared split in memory (or memory-mapped)."""

    images: np.ndarray  # uint8 N×H×W×C
    labels: np.ndarray  # int64 N
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1], of these images
    std: tuple[float, ...]
    name: str = ""
    split: str = ""
    #: row positions in the prepared split (None = all rows, in order)
    indices: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class FileListSplit:
    """An ImageNet-scale split: image files under ``root`` (decoded on demand)."""

    root: Path
    files: list[str]
    labels: np.ndarray
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    split: str = ""
    indices: Optional[np.ndarray] = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]

    @property
    def images(self):
        """A lazy, indexable view decoding with the test transform (Resize(256) -> CenterCrop(224))."""
        from .datasets import FileImages

        return FileImages(self.root, self.files)


def subset(split: Union[ArraySplit, FileListSplit], idx) -> Union[ArraySplit, FileListSplit]:
    """The rows ``idx`` of a split (statistics are recomputed for arrays)."""
    idx = np.asarray(idx, dtype=np.int64)
    base = split.indices if split.indices is not None else np.arange(len(split))
    if isinstance(split, FileListSplit):
        return replace(split, files=[split.files[i] for i in idx], labels=np.asarray(split.labels)[idx],
                       indices=base[idx])
    imgs = np.asarray(split.images[idx])
    mean, std = channel_stats(imgs)
    return replace(split, images=imgs, labels=np.asarray(split.labels)[idx], mean=mean, std=std, indices=base[idx])


def row_hashes(images: np.ndarray, chunk: int = 4096) -> list[bytes]:
    """A content hash per image (shape included)."""
    out = []
    shape = repr(tuple(images.shape[1:])).encode()
    for i in range(0, len(images), chunk):
        block = np.ascontiguousarray(images[i:i + chunk])
        flat = block.reshape(len(block), -1)
        for row in flat:
            out.append(hashlib.blake2b(row.tobytes(), digest_size=16, person=shape[:16]).digest())
    return out


def overlap_guard(aux, others: dict) -> dict[str, int]:
    """For each named set, how many of its images are exact (byte-identical) duplicates of an auxiliary image.

    Works on :class:`ArraySplit` (or raw uint8 arrays) by pixel content and on :class:`FileListSplit` by file
    content (files whose sizes differ cannot be equal, so only same-size files are hashed). Sets of different image
    shapes cannot share exact duplicates (0). The caller records the counts and warns when any is non-zero."""
    if isinstance(aux, FileListSplit) or any(isinstance(o, FileListSplit) for o in others.values()):
        return _overlap_files(aux, others)
    a = aux.images if hasattr(aux, "images") else aux
    aux_hashes = set(row_hashes(a))
    out = {}
    for name, other in others.items():
        imgs = other.images if hasattr(other, "images") else other
        if imgs.shape[1:] != a.shape[1:]:
            out[name] = 0
            continue
        out[name] = int(sum(h in aux_hashes for h in row_hashes(imgs)))
    return out


def _overlap_files(aux, others: dict) -> dict[str, int]:
    def paths(s) -> list[Path]:
        return s.paths if isinstance(s, FileListSplit) else []

    other_paths = {k: paths(v) for k, v in others.items()}
    sizes = {os.path.getsize(p) for ps in other_paths.values() for p in ps}
    aux_hashes = {sha256_file(p) for p in paths(aux) if os.path.getsize(p) in sizes}
    out = {}
    for k, ps in other_paths.items():
        if not isinstance(others[k], FileListSplit) or not isinstance(aux, FileListSplit):
            out[k] = 0
            continue
        out[k] = int(sum(sha256_file(p) in aux_hashes for p in ps))
    return out


_NON_DATA_OPTIONS = set(DOWNLOAD_OPTIONS)


def _options_key(spec: DatasetSpec, opts: dict, sources: dict[str, Source]) -> str:
    data_opts = {k: v for k, v in opts.items() if k not in _NON_DATA_OPTIONS}
    src = sorted((s.filename, s.checksum, s.content_sha256) for s in sources.values())
    return hashlib.sha256(json.dumps([FORMAT_VERSION, spec.builder, data_opts, src], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def prepare(name: str, *, data_dir: Union[str, Path], options: Optional[dict] = None, progress: bool = True,
            sources: Optional[dict[str, Source]] = None, force: bool = False) -> dict:
    """Download, verify and convert ``name`` into ``data_dir/prepared/name``; return its manifest.

    ``options``: the dataset's preparation options (``DATASETS[name].options`` plus, for downloadable sets,
    ``mirrors``/``retries``/``timeout``); an unknown key is an error. ``sources`` replaces registry entries by file
    name (tests); without it, ``$GREG_OOD_SOURCES`` may name a file of replacements (:func:`source_override`).
    A prepared copy made with the same options that passes the fast check is reused
    unless ``force``."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    spec = DATASETS[name]
    opts = resolve_options(spec, options)
    srcs = {s.filename: s for s in spec.sources}
    for fname, s in (source_override(name) if sources is None else sources).items():
        srcs[fname] = s
    data_dir = Path(data_dir)
    out = data_dir / "prepared" / name
    key = _options_key(spec, opts, srcs)
    if not force and (out / "manifest.json").exists():
        try:
            man = read_manifest(data_dir, name)
            if man.get("options_key") == key:
                for split in man.get("splits", {}):
                    _check_split_files(out, name, split, man, "fast")
                log.info("%s: prepared copy verified, reusing %s", name, out)
                return man
        except PreparedDataError as e:
            log.warning("%s: prepared copy not reusable (%s); preparing again", name, str(e).splitlines()[0])
    # build folders of killed earlier runs (never taken for a prepared copy, but they can be large)
    remove_stale_dirs(out.parent, rf"\.{re.escape(name)}\.(?:tmp|old)(?P<pid>\d+)")
    tmp = out.with_name(f".{name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        ctx = BuildContext(spec, opts, data_dir, tmp, progress, srcs)
        try:
            BUILDERS[spec.builder](ctx)
        except _ARCHIVE_ERRORS as e:
            raise PreparedDataError(_corrupt_input_message(ctx, e)) from e
        missing = [s for s in spec.splits if s not in ctx.manifest["splits"]]
        if missing:
            raise RuntimeError(f"{name}: converter produced no {missing} split(s)")
        manifest = {
            "format": FORMAT_VERSION, "name": name, "role": spec.role, "benchmark": spec.benchmark,
            "kind": spec.kind, "description": spec.description, "transform": spec.transform,
            "options": {k: v for k, v in opts.items() if k not in _NON_DATA_OPTIONS}, "options_key": key,
            **ctx.manifest,
        }
        manifest["overlap_guard"] = _within_dataset_overlap(tmp, manifest)
        write_json_atomic(tmp / "manifest.json", manifest)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


#: what reading a truncated or corrupt archive raises (tar/gzip/bz2/xz/zip/pickle)
_ARCHIVE_ERRORS = (EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error, gzip.BadGzipFile, lzma.LZMAError,
                   pickle.UnpicklingError)


def _corrupt_input_message(ctx: BuildContext, e: BaseException) -> str:
    """A message naming the input file(s) a converter was reading when the archive turned out unreadable."""
    srcs = ctx.manifest.get("sources", [])
    files = [Path(s["path"]) if Path(s["path"]).is_absolute() else ctx.data_dir / s["path"] for s in srcs]
    lines = [f"{ctx.name}: cannot read {', '.join(str(f) for f in files) or 'its input archive'}: "
             f"{type(e).__name__}: {e}."]
    for s, f in zip(srcs, files):
        want = ctx.sources[s["filename"]].size if s["filename"] in ctx.sources else None
        have = os.path.getsize(f) if f.exists() else None
        size = f"{have:,} bytes" if have is not None else "missing"
        lines.append(f"  {f}: {size}" + (f", {want:,} expected" if want else "")
                     + ("" if s.get("checksum_confirmed", True) else " (its published checksum is unconfirmed)"))
    lines.append(f"The archive is truncated or corrupt: delete it and {_fix_hint(ctx.name)}.")
    return "\n".join(lines)


def _within_dataset_overlap(folder: Path, manifest: dict) -> dict:
    """Exact duplicates of test images among the training images of the same dataset (array sets)."""
    sp = manifest["splits"]
    if manifest.get("kind") != "array" or "train" not in sp or "test" not in sp:
        return {}
    tr = np.load(folder / sp["train"]["images_file"], mmap_mode="r")
    te = np.load(folder / sp["test"]["images_file"], mmap_mode="r")
    return {"test_in_train": overlap_guard(tr, {"test": te})["test"]}


def _swap_in(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------- reading
def _fix_hint(name: str) -> str:
    return f"re-run `dvc repro download@{name}` (or `python stages/download.py {name}`) to prepare it again"


def read_manifest(data_dir: Union[str, Path], name: str) -> dict:
    p = Path(data_dir) / "prepared" / name / "manifest.json"
    if not p.exists():
        raise PreparedDataError(f"{p}: not found; dataset {name!r} is not prepared. {_fix_hint(name)}.")
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise PreparedDataError(f"{p}: unreadable manifest ({e}). {_fix_hint(name)}.") from None


#: files up to this size get their full sha256 checked on every load (``verify="fast"``); about 0.1 s per 50 MB
FULL_CHECK_BYTES = 256 * 2**20


def _check_split_files(out: Path, name: str, split: str, man: dict, verify: str) -> None:
    entry = man["splits"][split]
    if "files_file" in entry:
        checks = [(entry["files_file"], entry["files_bytes"], entry["files_sha256"], entry.get("files_probe"))]
    else:
        checks = [(entry["images_file"], entry["images_bytes"], entry["images_sha256"], entry.get("images_probe")),
                  (entry["labels_file"], entry["labels_bytes"], entry["labels_sha256"], entry.get("labels_probe"))]
    for fname, nbytes, sha, probe in checks:
        p = out / fname
        problem = None
        if not p.exists():
            problem = "missing"
        elif os.path.getsize(p) != nbytes:
            problem = f"size {os.path.getsize(p):,} bytes, the manifest says {nbytes:,} (truncated or replaced)"
        elif (verify == "full" or (verify == "fast" and nbytes <= FULL_CHECK_BYTES)) and sha256_file(p) != sha:
            problem = "sha256 differs from the manifest (the file was changed after preparation)"
        elif verify == "fast" and probe and probe_hash(p) != probe:
            problem = "content differs from the manifest (the file was changed after preparation)"
        if problem:
            raise PreparedDataError(f"{p}: {problem}. {_fix_hint(name)}.")


def load_split(data_dir: Union[str, Path], name: str, split: str, *, classes: Optional[Sequence[int]] = None,
               relabel: bool = True, verify: str = "fast", mmap: bool = True) -> Union[ArraySplit, FileListSplit]:
    """Load one prepared split, checked against its manifest.

    ``verify``: "none", "fast" (sizes, and the sha256 of every file up to :data:`FULL_CHECK_BYTES` — so a same-size
    change of a small set is caught too — and a sampled content hash of larger files) or "full" (sha256 of every
    file).
    ``classes`` keeps only those labels; with ``relabel`` they become 0..len(classes)-1 in the given order.
    Array sets give an :class:`ArraySplit` (memory-mapped when no class filter applies), file-list sets a
    :class:`FileListSplit`."""
    if verify not in ("none", "fast", "full"):
        raise ValueError(f"verify must be 'none', 'fast' or 'full', not {verify!r}")
    data_dir = Path(data_dir)
    out = data_dir / "prepared" / name
    man = read_manifest(data_dir, name)
    if split not in man.get("splits", {}):
        raise PreparedDataError(f"{out}: dataset {name!r} has no split {split!r}; it has "
                                f"{sorted(man.get('splits', {}))}")
    entry = man["splits"][split]
    if verify != "none":
        _check_split_files(out, name, split, man, verify)
    class_names = list(entry.get("class_names", []))
    if "files_file" in entry:
        doc = json.loads((out / entry["files_file"]).read_text())
        root = Path(doc["root"])
        root = root if root.is_absolute() else data_dir / root
        sp = FileListSplit(root=root, files=list(doc["files"]), labels=np.asarray(doc["labels"], dtype=np.int64),
                           class_names=list(doc.get("class_names", class_names)),
                           mean=tuple(entry.get("mean") or ()), std=tuple(entry.get("std") or ()), name=name,
                           split=split, info={k: v for k, v in entry.items() if k not in ("class_names",)})
        if classes is not None:
            return _select_classes(sp, classes, relabel)
        return sp
    ip, lp = out / entry["images_file"], out / entry["labels_file"]
    try:
        images = np.load(ip, mmap_mode="r" if mmap else None)
        labels = np.load(lp)
    except (ValueError, OSError, EOFError) as e:
        raise PreparedDataError(f"{ip}: cannot be read as .npy ({e}). {_fix_hint(name)}.") from None
    if list(images.shape) != list(entry["shape"]) or images.dtype != np.uint8:
        raise PreparedDataError(f"{ip}: shape {images.shape} {images.dtype}, the manifest says {entry['shape']} "
                                f"uint8. {_fix_hint(name)}.")
    if labels.shape != (len(images),) or labels.dtype != np.int64:
        raise PreparedDataError(f"{lp}: {labels.shape} {labels.dtype} labels for {len(images)} images. "
                                f"{_fix_hint(name)}.")
    sp = ArraySplit(images=images, labels=labels, class_names=class_names, mean=tuple(entry["mean"]),
                    std=tuple(entry["std"]), name=name, split=split)
    if classes is not None:
        return _select_classes(sp, classes, relabel)
    return sp


def _select_classes(sp, classes: Sequence[int], relabel: bool):
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"{sp.name}/{sp.split}: duplicate entries in classes={classes}")
    known = set(range(len(sp.class_names))) if sp.class_names else set(int(v) for v in np.unique(sp.labels))
    bad = [c for c in classes if c not in known]
    if bad:
        raise ValueError(f"{sp.name}/{sp.split}: classes {bad} do not exist (labels are {sorted(known)[:20]}"
                         f"{'...' if len(known) > 20 else ''})")
    labels = np.asarray(sp.labels)
    idx = np.flatnonzero(np.isin(labels, classes))
    out = subset(sp, idx)
    names = [sp.class_names[c] for c in classes] if sp.class_names else []
    if relabel:
        lut = np.full(max(max(classes), int(labels.max(initial=0))) + 1, -1, dtype=np.int64)
        lut[classes] = np.arange(len(classes))
        out.labels = lut[np.asarray(out.labels)]
        out.class_names = names
    return out
