"""Pre-flight checks: what a stage needs from the machine, checked before any compute, so that a problem the user can
fix ends the stage in seconds, not after hours of training (docs/reliability.md).

* every output folder and the checkpoint folder is writable (a real file is created there and removed: the same
  temporary name an atomic write would use, so a kill in between leaves nothing another run would not clean up);
* there is enough free disk for the checkpoint and the outputs (estimated from the model's size);
* the MLflow store opens and accepts a write;
* every input is present.

Each failure is a :class:`PreflightError`: one sentence naming the real path (the model, not a temporary file) and
a fix that works. Stale checksum sidecars of missing outputs (DVC removes a stage's outputs before running it, not
their ``.sha256`` sidecars) are removed here too.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .errors import UserError
from .io import checksum_path, temp_name

MIB = 1 << 20
#: free space kept on top of the estimate (logs, DVC's cache copy goes elsewhere)
MARGIN_BYTES = 64 * MIB


class PreflightError(UserError):
    """A pre-flight check failed; the message says which path and how to fix it."""


@dataclass(frozen=True)
class Needs:
    """What a stage writes and reads. ``outputs``: files (or folders) it writes; ``checkpoint``: its checkpoint file,
    if any; ``inputs``: ``(path, how to make it)`` pairs, ``how`` being e.g. ``dvc repro pretrain_mini@small_cnn``;
    ``write_bytes``: the estimated size of everything it writes at once (see :func:`training_bytes`);
    ``data_dir``: the data folder (``project.data_dir``), whose fix differs from a repository folder's."""

    outputs: Sequence[Path] = ()
    checkpoint: Optional[Path] = None
    inputs: Sequence[tuple[Path, str]] = ()
    write_bytes: int = 0
    data_dir: Optional[Path] = None
    mlflow: bool = True


def model_bytes(model) -> int:
    """Bytes of a model's parameters and buffers as saved."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def training_bytes(model, optimizer: str = "sgd") -> int:
    """Disk a training stage needs at its peak: the final weights, plus the checkpoint (weights and optimiser state:
    one more copy for SGD momentum, two for Adam) twice over while an atomic rewrite holds old and new."""
    w = model_bytes(model)
    ckpt = w * (3 if optimizer == "adam" else 2)
    return w + 2 * ckpt


def check(needs: Needs) -> None:
    """Run every pre-flight check of ``needs``; raise :class:`PreflightError` on the first failure."""
    files = [Path(p) for p in needs.outputs] + ([Path(needs.checkpoint)] if needs.checkpoint else [])
    for f in files:
        remove_orphan_sidecar(f)
    for f in files:
        check_writable(f, data_dir=needs.data_dir)
    check_free_space(files, needs.write_bytes)
    check_inputs(needs.inputs)
    if needs.mlflow:
        check_mlflow()


def remove_orphan_sidecar(path: Path) -> bool:
    """Remove ``path``'s checksum sidecar when ``path`` itself is gone (DVC removed the output before re-running its
    stage); returns whether one was removed."""
    side = checksum_path(path)
    if side.is_file() and not Path(path).exists():
        side.unlink(missing_ok=True)
        return True
    return False


def _fix(folder: Path, target: Path, data_dir: Optional[Path]) -> str:
    """How to make ``folder`` (what blocks writing into ``target``) writable: for the data folder, also where to move
    it; for a repository folder, what usually blocks it."""
    if data_dir is not None and _inside(target, data_dir):
        return (f"make {folder} writable, or point project.data_dir (params.yaml) at a writable folder for the "
                "data")
    return (f"make {folder} writable (its owner and permissions, `chattr -i`, or a read-only mount), or run the "
            "pipeline from a clone on a writable disk")


def _inside(p: Path, parent: Path) -> bool:
    try:
        Path(os.path.abspath(p)).relative_to(os.path.abspath(parent))
        return True
    except ValueError:
        return False


def check_writable(path: Path, data_dir: Optional[Path] = None) -> None:
    """``path`` (a file the stage will write) can be written: its folder exists or can be made, and a file can be
    created in it. Probes with the temporary name an atomic write of ``path`` would use, removed at once."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = _first_existing(folder)
        if not blocker.is_dir():
            raise PreflightError(f"cannot write {path}: {blocker} is a file, not a folder; move {blocker} aside "
                                 "and re-run") from None
        raise PreflightError(f"cannot write {path}: {folder} cannot be created in {blocker} ({e.strerror}); "
                             f"{_fix(blocker, folder, data_dir)}") from None
    probe = temp_name(path)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
    except OSError as e:
        raise PreflightError(f"cannot write {path}: {folder} does not accept new files ({e.strerror}); "
                             f"{_fix(folder, folder, data_dir)}") from None
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def _first_existing(folder: Path) -> Path:
    """The deepest existing path on the way to ``folder`` (what blocks creating it)."""
    for p in [folder, *folder.parents]:
        if os.path.lexists(p):
            return p
    return Path(".")


def check_free_space(files: Iterable[Path], need: int) -> None:
    """The disk holding ``files`` has ``need`` bytes (plus a margin) free."""
    files = list(files)
    if not files or need <= 0:
        return
    folder = _first_existing(Path(files[0]).parent)
    free = shutil.disk_usage(folder).free
    if free < need + MARGIN_BYTES:
        raise PreflightError(
            f"not enough free disk for {files[0]}: about {(need + MARGIN_BYTES) / MIB:.0f} MiB needed (outputs and "
            f"checkpoint), {free / MIB:.0f} MiB free on the disk of {folder}; free some space there and re-run")


def check_inputs(inputs: Iterable[tuple[Path, str]]) -> None:
    """Every input ``(path, how to make it)`` exists."""
    for path, how in inputs:
        if not Path(path).exists():
            raise PreflightError(f"input {path} is missing; make it with `{how}`")


def check_mlflow(uri: Optional[str] = None) -> None:
    """The MLflow store opens (:func:`greg_ood.run.tracking.make_client`; a server must answer) and, for the local
    SQLite store, accepts a write (a write transaction is begun and rolled back)."""
    from . import tracking

    uri = uri or tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        check_writable(db)
        if db.exists():
            _sqlite_write_probe(db)
    tracking.check_reachable(uri)
    tracking.make_client(uri)


def _sqlite_write_probe(db: Path) -> None:
    import sqlite3

    try:
        con = sqlite3.connect(str(db), timeout=60)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
        finally:
            con.close()
    except sqlite3.Error as e:
        if "not a database" in str(e):
            return  # make_client names the broken store and its fix
        raise PreflightError(f"{db}: the MLflow store does not accept a write ({e}); make {db} and its folder "
                             "writable, or set MLFLOW_TRACKING_URI to a store you can write") from None
