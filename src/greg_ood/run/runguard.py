"""Process-level guards of a stage run: the errors that end a stage with one clear sentence, one trainer per
checkpoint (an exclusive lock), a stage that dies with its parent ``dvc``, and SIGTERM/SIGINT turned into a clean stop.

* :class:`StageError` and its subclasses carry a message that names the file and the fix; the stage front
  (:func:`greg_ood.run.pipeline.run_stage`) prints it and exits with status 2 (the traceback only with ``-v``).
* :func:`hold_run_lock` takes an exclusive ``fcntl.flock`` on ``<checkpoint>.lock`` for the life of the process (the
  kernel releases it when the process dies, however it dies); a second trainer on the same checkpoint stops at once,
  naming the holder's PID.
* :func:`die_with_parent` asks the kernel to send SIGTERM when the parent process (``dvc``) dies
  (``prctl(PR_SET_PDEATHSIG)``), with a thread that polls the parent PID where prctl is unavailable.
* :func:`install_signal_handlers`: SIGTERM/SIGINT raise :class:`StageKilled` at once, except inside the training loop
  (:func:`graceful_stop`), where they only set a flag that the trainer checks after each step, so it can save a final
  checkpoint first. A second signal raises at once.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

from .errors import UserError

PR_SET_PDEATHSIG = 1


class StageError(UserError, RuntimeError):
    """A problem the user can fix; the message names the file or key and the fix (exit status 2, no traceback)."""


class RunLockedError(StageError):
    """Another live process trains on the same checkpoint."""


class IntegrityError(StageError):
    """A file does not match the checksum written with it (corrupted or replaced after it was written)."""


class StageKilled(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; MLflow marks the run KILLED (a ``KeyboardInterrupt``) and the stage exits
    with ``128 + signum``."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# ------------------------------------------------------------------------------------------------------- run lock
_held: dict[str, int] = {}


def lock_path(ckpt_path: Path) -> Path:
    return Path(ckpt_path).with_name(Path(ckpt_path).name + ".lock")


def hold_run_lock(ckpt_path: Path) -> Path:
    """Take the exclusive lock of the run that writes ``ckpt_path`` and keep it until the process exits.

    Raises :class:`RunLockedError` naming the holder's PID when another process has it. Taking it twice in one
    process is a no-op."""
    import fcntl

    path = lock_path(ckpt_path)
    if str(path) in _held:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"{path}: another trainer (PID {holder}) is writing this checkpoint; wait for it to finish or stop it "
            f"(kill {holder}), then re-run") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[str(path)] = fd  # never closed: the kernel drops the lock when the process ends
    return path


# --------------------------------------------------------------------------------------------------- parent death
def die_with_parent() -> str:
    """Make this process receive SIGTERM when its parent dies. Returns how: ``"prctl"``, ``"watchdog"`` or
    ``"orphan"`` (the parent was already gone: SIGTERM sent now)."""
    parent = os.getppid()
    how = "watchdog"
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):
            pass
    if how == "watchdog":
        threading.Thread(target=_watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()
    if parent == 1 or not _alive(parent):  # died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
        return "orphan"
    return how


def _watch_parent(parent: int, every: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# -------------------------------------------------------------------------------------------------------- signals
_state = {"graceful": False, "requested": None}


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise :class:`StageKilled` (or, inside :func:`graceful_stop`, request a stop)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _on_signal)


def _on_signal(signum, frame) -> None:
    if _state["graceful"] and _state["requested"] is None:
        _state["requested"] = signum
        return
    raise StageKilled(signum)


def stop_requested() -> Optional[int]:
    """The signal number that asked for a stop during :func:`graceful_stop`, else None."""
    return _state["requested"]


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Within this block a first SIGTERM/SIGINT only sets :func:`stop_requested` (the trainer saves, then raises)."""
    _state["graceful"], _state["requested"] = True, None
    try:
        yield
    finally:
        _state["graceful"] = False
        signum, _state["requested"] = _state["requested"], None
        if signum is not None:
            raise StageKilled(signum)
