"""What a dataset converter works with: :class:`BuildContext` (options, paths, fetching, and the writers of the prepared
files and their manifest entries) and the file/array digests the manifest records.

The converters (``mini.py``, ``paper.py``, ``imagenet.py``) import this module only; ``registry.py`` maps dataset
names to them and ``prepare.py`` runs them, so the import graph has no circle.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .download import fetch, file_digest
from .sources import DOWNLOAD_OPTIONS, DatasetSpec, Source

log = logging.getLogger("greg_ood.data")

PROBE_CHUNKS, PROBE_BYTES = 16, 1 << 16

def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of uint8 N×H×W×C pixels, scaled to [0, 1]."""
    n = len(images)
    c = images.shape[-1] if images.ndim == 4 else 1
    if n == 0:
        return tuple([0.0] * c), tuple([0.0] * c)
    s = np.zeros(c, dtype=np.float64)
    ss = np.zeros(c, dtype=np.float64)
    count = 0
    for i in range(0, n, chunk):
        x = np.asarray(images[i:i + chunk], dtype=np.float64).reshape(-1, c) / 255.0
        s += x.sum(0)
        ss += np.square(x).sum(0)
        count += x.shape[0]
    mean = s / count
    var = np.maximum(ss / count - mean ** 2, 0.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(var))


# ----------------------------------------------------------------------------------------------------- hashing
def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file (the manifests' checksum)."""
    return file_digest(path, "sha256")


def probe_hash(path: Path) -> str:
    """sha256 of a few evenly spaced 64 KiB windows plus the size: cheap and catches most replacements."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= PROBE_CHUNKS * PROBE_BYTES:
            h.update(f.read())
        else:
            step = (size - PROBE_BYTES) // (PROBE_CHUNKS - 1)
            for k in range(PROBE_CHUNKS):
                f.seek(k * step)
                h.update(f.read(PROBE_BYTES))
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------- building
class BuildContext:
    """What a converter gets: options, paths, a fetch helper and writers for the prepared files."""

    def __init__(self, spec: DatasetSpec, options: dict, data_dir: Path, out_dir: Path, progress: bool,
                 sources: dict[str, Source]):
        self.spec = spec
        self.name = spec.name
        self.options = options
        self.data_dir = Path(data_dir)
        self.raw_dir = self.data_dir / "raw" / spec.raw_name
        self.out_dir = out_dir
        self.progress = progress
        self.sources = sources
        self.manifest: dict[str, Any] = {"sources": [], "splits": {}, "warnings": []}

    # -- inputs
    def source(self, filename: str) -> Source:
        return self.sources[filename]

    def fetch(self, filename: str) -> Path:
        src = self.sources[filename]
        mirrors = (self.options.get("mirrors") or {})
        extra = mirrors.get(filename, []) if isinstance(mirrors, dict) else list(mirrors)
        path = fetch(src, self.raw_dir, dataset=self.name, progress=self.progress,
                     retries=int(self.options.get("retries", DOWNLOAD_OPTIONS["retries"])),
                     timeout=float(self.options.get("timeout", DOWNLOAD_OPTIONS["timeout"])),
                     extra_urls=extra)
        origin = _read_origin(path)
        algo, want = src.checksum
        self.manifest["sources"].append({
            "filename": src.filename, "path": _rel(path, self.data_dir), "urls": list(src.urls),
            "url_used": origin, algo: want, "checksum_confirmed": src.checksum_confirmed,
            "bytes": os.path.getsize(path)})
        if not want:  # nothing published to verify against: record what was used, so it can be pinned
            self.manifest["sources"][-1]["sha256_measured"] = sha256_file(path)
        return path

    def warn(self, msg: str) -> None:
        log.warning("%s: %s", self.name, msg)
        self.manifest["warnings"].append(msg)

    # -- outputs
    def write_split(self, split: str, images: np.ndarray, labels: Optional[np.ndarray] = None,
                    class_names: Sequence[str] = (), **info: Any) -> dict:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{self.name}/{split}: images must be uint8 N×H×W×C, got {images.dtype} {images.shape}")
        n = len(images)
        labels = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise ValueError(f"{self.name}/{split}: {labels.shape} labels for {n} images")
        ip, lp = self.out_dir / f"{split}.images.npy", self.out_dir / f"{split}.labels.npy"
        np.save(ip, np.ascontiguousarray(images))
        np.save(lp, labels)
        return self._record_arrays(split, ip, lp, images, labels, class_names, info)

    def adopt_split(self, split: str, npy: Path, labels: Optional[np.ndarray] = None,
                    class_names: Sequence[str] = (), **info: Any) -> dict:
        """Use an existing, already correct ``.npy`` as the split's images (hard link where possible)."""
        ip, lp = self.out_dir / f"{split}.images.npy", self.out_dir / f"{split}.labels.npy"
        try:
            os.link(npy, ip)
        except OSError:
            shutil.copyfile(npy, ip)
        images = np.load(ip, mmap_mode="r")
        n = len(images)
        labels = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        np.save(lp, labels)
        return self._record_arrays(split, ip, lp, images, labels, class_names, info)

    def _record_arrays(self, split, ip, lp, images, labels, class_names, info) -> dict:
        mean, std = channel_stats(images)
        present = sorted(int(v) for v in np.unique(labels)) if len(labels) else []
        entry = {
            "count": int(len(images)), "shape": [int(s) for s in images.shape], "dtype": "uint8",
            "images_file": ip.name, "labels_file": lp.name,
            "images_bytes": os.path.getsize(ip), "labels_bytes": os.path.getsize(lp),
            "images_sha256": sha256_file(ip), "labels_sha256": sha256_file(lp),
            "images_probe": probe_hash(ip), "labels_probe": probe_hash(lp),
            "class_names": list(class_names), "num_classes": len(class_names),
            "label_counts": {str(v): int((labels == v).sum()) for v in present} if len(present) <= 1000 else {},
            "mean": list(mean), "std": list(std), **info,
        }
        exp = self.spec.expected_counts.get(split)
        if exp is not None and exp != entry["count"] and self._default_count():
            self.warn(f"split {split!r} has {entry['count']} images, {exp} expected")
        self.manifest["splits"][split] = entry
        return entry

    def write_files(self, split: str, root: Path, files: Sequence[str], labels: Optional[Sequence[int]] = None,
                    class_names: Sequence[str] = (), mean=None, std=None, **info: Any) -> dict:
        """A file-list split (paths relative to ``root``; ``root`` stored relative to data_dir where inside it)."""
        files = list(files)
        labels = [-1] * len(files) if labels is None else [int(v) for v in labels]
        if len(labels) != len(files):
            raise ValueError(f"{self.name}/{split}: {len(labels)} labels for {len(files)} files")
        fp = self.out_dir / f"{split}.files.json"
        doc = {"root": _rel(Path(root), self.data_dir), "files": files, "labels": labels,
               "class_names": list(class_names)}
        fp.write_text(json.dumps(doc))
        entry = {"count": len(files), "files_file": fp.name, "files_bytes": os.path.getsize(fp),
                 "files_sha256": sha256_file(fp), "files_probe": probe_hash(fp), "root": doc["root"], "class_names": list(class_names),
                 "num_classes": len(class_names), "mean": list(mean) if mean is not None else None,
                 "std": list(std) if std is not None else None, **info}
        exp = self.spec.expected_counts.get(split)
        if exp is not None and exp != entry["count"] and self._default_count():
            self.warn(f"split {split!r} has {entry['count']} files, {exp} expected")
        self.manifest["splits"][split] = entry
        return entry

    def _default_count(self) -> bool:
        return "count" not in self.spec.options or self.options.get("count") == self.spec.options.get("count")


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(base)).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def _read_origin(path: Path) -> str:
    side = path.with_name(path.name + ".origin")
    if side.exists():
        try:
            return json.loads(side.read_text()).get("url", "")
        except (OSError, ValueError):
            pass
    return "local copy (system package or placed by hand)"
