"""Atomic writers: a file is either the old complete version or the new complete version, never partial.

Every writer goes through :func:`atomic_open`: the bytes go to a hidden temporary sibling
``.<name>.tmp-<pid>-<token>`` (a name no consumer's pattern such as ``*.npz`` or ``*.json`` matches), which is
flushed, fsynced and renamed over the final name; the folder is fsynced after the rename. A process killed
mid-write leaves only such a temporary file; the next write of the same file (or :func:`remove_stale_temps` on its
folder) deletes the temporaries of processes that no longer exist, so a re-run leaves exactly the files of an
uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_name(path: Path) -> Path:
    """The temporary sibling used while ``path`` is being written (unique per process and call)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: os.PathLike | str, name: str | None = None, recursive: bool = False) -> list[Path]:
    """Delete the temporary files left in ``folder`` by killed writers (their process is gone); only those of the
    final file ``name`` when given. Returns the removed paths."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    it = folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*")
    for p in it:
        m = _TMP_RE.match(p.name)
        if m is None or (name is not None and m["name"] != name) or not p.is_file():
            continue
        if pid_alive(int(m["pid"])):
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def remove_stale_dirs(parent: os.PathLike | str, pattern: str) -> list[Path]:
    """Delete the entries of ``parent`` whose name fully matches the regex ``pattern`` (which has a group ``pid``)
    and whose process is gone: the temporary folders of killed builders. Returns the removed paths."""
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    rx = re.compile(pattern)
    for e in os.scandir(parent):
        m = rx.fullmatch(e.name)
        if m is None or pid_alive(int(m["pid"])):
            continue
        p = Path(e.path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def fsync_dir(folder: os.PathLike | str) -> None:
    """fsync a folder so a rename inside it is durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: os.PathLike | str, mode: str = "wb", *, before_replace: Optional[Callable[[Path], None]] = None,
                **kw) -> Iterator:
    """Open a temporary sibling of ``path`` for writing; on a clean exit flush, fsync and rename it to ``path``.
    On an exception the temporary file is removed and ``path`` is untouched. ``before_replace(tmp)`` runs on the
    complete temporary file just before the rename (e.g. to write its checksum first)."""
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_open is for writing a whole file, not mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = temp_name(path)
    try:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: os.PathLike | str, data: bytes | str) -> Path:
    """Write ``data`` (str is UTF-8 encoded) to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path, obj, indent: int = 1) -> None:
    """``json.dump`` to ``path`` atomically (NumPy scalars/arrays and paths are converted)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent, default=_default)


def write_npz_atomic(path, arrays: dict) -> None:
    """``np.savez_compressed`` to ``path`` atomically (written through a file object: no suffix is appended)."""
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def sha256_of(path: os.PathLike | str) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checksum_path(path: os.PathLike | str) -> Path:
    """The checksum sidecar of ``path``: ``<name>.sha256`` next to it."""
    return Path(path).with_name(Path(path).name + ".sha256")


@contextmanager
def checked_open(path: os.PathLike | str) -> Iterator:
    """:func:`atomic_open` for binary writing that also records the file's sha256 in :func:`checksum_path`.

    The sidecar (written atomically just before the data file is renamed into place) lists the new hash and the
    hash of the file it replaces, so a kill between the two renames leaves a pair that still verifies."""
    path = Path(path)

    def record(tmp: Path) -> None:
        previous = sha256_of(path) if path.exists() else None
        write_json_atomic(checksum_path(path), {"file": path.name, "sha256": sha256_of(tmp), "previous": previous})

    with atomic_open(path, "wb", before_replace=record) as f:
        yield f


def verify_checksum(path: os.PathLike | str, *, required: bool = True) -> Optional[str]:
    """Why ``path`` does not match its sidecar written by :func:`checked_open` (a short reason), or None when it does.
    A missing sidecar is a reason when ``required``, else None (nothing to check against)."""
    side = checksum_path(path)
    if not side.exists():
        return f"no checksum file {side.name}" if required else None
    try:
        rec = json.loads(side.read_text())
        expected = {rec["sha256"], rec.get("previous")} - {None}
    except (ValueError, KeyError, TypeError):
        return f"unreadable checksum file {side.name}"
    if sha256_of(path) not in expected:
        return f"sha256 differs from {side.name} (the file was changed or corrupted after it was written)"
    return None


def _default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
