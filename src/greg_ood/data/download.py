"""Fetch one file: reuse a verified local copy, else download it resumably and verify it.

* The download goes to ``<file>.part``; an HTTP ``Range`` request continues a partial one (a server that ignores
  ``Range`` and answers 200 restarts it). Only a file whose checksum matches is renamed to its final name, so a file
  under its final name is always complete.
* Every URL of the source (then the user's mirrors) is tried, each up to ``retries`` times with exponential back-off.
* A copy placed by hand at the final path is verified and used; a wrong one is moved aside (``<file>.bad``) and
  fetched again.
* When nothing works, :class:`ManualDownloadRequired` names the file, its checksum, the URLs and the exact path
  where a manually fetched copy can be placed.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from ..run.errors import UserError
from ..run.io import write_json_atomic
from .sources import Source

log = logging.getLogger("greg_ood.data")

USER_AGENT = "greg-ood-data/0.1 (+https://github.com/o4lc/Greg-OOD reproduction)"
CHUNK = 1 << 20
#: seconds before the second attempt at a URL (doubled each attempt, at most 60 s); tests lower it
DEFAULT_BACKOFF = 1.0


class DownloadError(UserError, RuntimeError):
    """A file could not be obtained."""


class ManualDownloadRequired(DownloadError):
    """No URL worked: the message says where to put a manually fetched copy."""


class _Retryable(Exception):
    pass


class _Fatal(Exception):
    """Give up this URL (404, HTML page instead of the file, certificate problem)."""


# ----------------------------------------------------------------------------------------------------- checksums
def file_digest(path: Path | str, algo: str = "md5", *, gunzip: bool = False) -> str:
    h = hashlib.new(algo)
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def verify_file(path: Path | str, source: Source) -> tuple[bool, str]:
    """(ok, detail). ``ok`` when the published checksum (or, for a repackaged copy, the content checksum) matches."""
    path = Path(path)
    if not path.is_file():
        return False, "missing"
    algo, want = source.checksum
    if not want and not source.content_sha256:
        return True, "no checksum to verify"
    if want:
        got = file_digest(path, algo)
        if got == want:
            return True, f"{algo} {got}"
    else:
        got = "-"
    if source.content_sha256:
        try:
            content = file_digest(path, "sha256", gunzip=path.suffix == ".gz")
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            return False, f"unreadable ({e})"
        if content == source.content_sha256:
            return True, f"content sha256 {content} (repackaged copy)"
    return False, f"{algo} is {got}, expected {want}"


# ----------------------------------------------------------------------------------------------------- system copies
@lru_cache(maxsize=None)
def system_files(package: str) -> tuple[Path, ...]:
    """Files of an installed Debian package (``dpkg -L``); () where dpkg or the package is missing."""
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ()
    if out.returncode != 0:
        return ()
    return tuple(Path(line) for line in out.stdout.splitlines() if line.strip() and Path(line).is_file())


def find_system_copy(source: Source) -> Optional[Path]:
    for pkg in source.system_packages:
        for p in system_files(pkg):
            if p.name == source.filename and verify_file(p, source)[0]:
                return p
    for d in source.system_dirs:
        p = Path(d) / source.filename
        if p.is_file() and verify_file(p, source)[0]:
            return p
    return None


# ----------------------------------------------------------------------------------------------------- main entry
def manual_message(source: Source, dest: Path, dataset: str, errors: Sequence[str] = (), note: str = "") -> str:
    lines = [f"could not obtain {source.filename!r} for dataset {dataset!r}."]
    if note:
        lines.append(note)
    if errors:
        lines.append("tried:")
        lines += [f"  - {e}" for e in errors]
    if source.urls:
        lines.append("Fetch it by hand (browser, another machine) from one of:")
        lines += [f"  {u}" for u in source.urls]
    lines += [f"  ({a})" for a in source.alternatives]
    size = f"{source.size:,} bytes" if source.size else (source.approx_size or "size not published")
    lines.append(f"expected: {source.describe_checksum()}, {size}")
    lines.append(f"and place it at: {dest}")
    lines.append(f"then re-run `dvc repro download@{dataset}` (the copy is verified before use).")
    return "\n".join(lines)


def fetch(source: Source, dest_dir: Path | str, *, dataset: str = "?", progress: bool = True, retries: int = 4,
          timeout: float = 60.0, backoff: Optional[float] = None, extra_urls: Iterable[str] = (),
          sleep: Callable[[float], None] = time.sleep) -> Path:
    """Return the path of a verified copy of ``source`` (downloading it into ``dest_dir`` if needed)."""
    dest_dir = Path(dest_dir)
    dest = dest_dir / source.filename
    backoff = DEFAULT_BACKOFF if backoff is None else backoff
    note = ""
    if dest.exists():
        ok, detail = verify_file(dest, source)
        if ok:
            return dest
        if not source.checksum_confirmed and source.checksum[1]:
            log.warning("%s: %s; the published checksum is unconfirmed, so the copy is used as it is", dest, detail)
            return dest
        bad = dest.with_name(dest.name + ".bad")
        os.replace(dest, bad)
        dest.with_name(dest.name + ".origin").unlink(missing_ok=True)
        note = f"the copy at {dest} failed verification ({detail}); moved to {bad}."
        log.warning("%s: %s -> moved aside to %s, fetching again", dest, detail, bad)
    sys_copy = find_system_copy(source)
    if sys_copy is not None:
        log.info("%s: using the system copy %s", source.filename, sys_copy)
        return sys_copy
    urls = list(source.urls) + [u for u in extra_urls if u not in source.urls]
    if not source.downloadable or not urls:
        raise ManualDownloadRequired(manual_message(source, dest, dataset, note=note or "it is never downloaded."))
    dest_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):  # two stages sharing an archive (dtd, dtd_imagenet) never write one .part together
        if dest.exists() and verify_file(dest, source)[0]:
            return dest  # fetched by another process meanwhile
        return _fetch_urls(source, dest, urls, dataset=dataset, progress=progress, retries=retries,
                           timeout=timeout, backoff=backoff, sleep=sleep, note=note)


@contextmanager
def _exclusive(dest: Path):
    lock = dest.with_name(dest.name + ".lock")
    with open(lock, "a") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock (Windows, some network file systems): proceed unlocked
            pass
        yield


def _fetch_urls(source: Source, dest: Path, urls: list[str], *, dataset: str, progress: bool, retries: int,
                timeout: float, backoff: float, sleep, note: str) -> Path:
    errors: list[str] = []
    for url in urls:
        for attempt in range(max(1, retries)):
            try:
                _download(url, dest, source, progress=progress, timeout=timeout)
                return dest
            except _Fatal as e:
                errors.append(f"{url}: {e}")
                break
            except _Retryable as e:
                msg = f"{url} (attempt {attempt + 1}/{retries}): {e}"
                log.warning("download %s", msg)
                if attempt + 1 < retries:
                    sleep(min(backoff * 2 ** attempt, 60.0))
                else:
                    errors.append(msg)
    raise ManualDownloadRequired(manual_message(source, dest, dataset, errors, note))


def _download(url: str, dest: Path, source: Source, *, progress: bool, timeout: float) -> None:
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if source.size is not None and have > source.size:
        part.unlink()
        have = 0
    if source.size is not None and have == source.size:
        if _finish(part, dest, source, url):
            return
        have = 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # asked past the end: the .part may be complete already
            if _finish(part, dest, source, url):
                return
            raise _Retryable("HTTP 416 and the partial file does not verify; restarting") from None
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise _Fatal(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise _Fatal(f"TLS certificate problem: {e.reason}") from None
        raise _Retryable(f"{e.reason}") from None
    except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
        raise _Retryable(f"{type(e).__name__}: {e}") from None
    with resp:
        status = getattr(resp, "status", 200)
        ctype = resp.headers.get("Content-Type", "")
        if "text/html" in ctype and not source.filename.endswith((".html", ".htm")):
            raise _Fatal("the server answered with an HTML page instead of the file (link expired or needs a "
                         "browser)")
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            crange = resp.headers.get("Content-Range", "")
            start = _range_start(crange)
            if start != have:
                raise _Retryable(f"server resumed at {start} instead of {have} ({crange!r}); restarting")
            mode = "ab"
        else:
            have, mode = 0, "wb"  # 200: the server sends the whole file
        total = (have + length) if length is not None else source.size
        bar = _bar(progress, total, have, source.filename)
        got = 0
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        b = resp.read(CHUNK)
                    except http.client.IncompleteRead as e:
                        f.write(e.partial)
                        got += len(e.partial)
                        raise _Retryable(f"connection closed after {have + got:,} bytes") from None
                    except (socket.timeout, TimeoutError, ConnectionError, OSError) as e:
                        raise _Retryable(f"{type(e).__name__} after {have + got:,} bytes: {e}") from None
                    if not b:
                        break
                    f.write(b)
                    got += len(b)
                    if bar is not None:
                        bar.update(len(b))
                f.flush()
                os.fsync(f.fileno())
        finally:
            if bar is not None:
                bar.close()
        if length is not None and got < length:
            raise _Retryable(f"connection closed after {have + got:,} of {have + length:,} bytes")
    if not _finish(part, dest, source, url):
        raise _Retryable("checksum mismatch after download; fetching again from the start")


def _finish(part: Path, dest: Path, source: Source, url: str = "") -> bool:
    ok, detail = verify_file(part, source)
    if not ok and not source.checksum_confirmed:
        log.warning("%s: %s (the published checksum is unconfirmed; keeping the file)", dest.name, detail)
        ok = True
    if not ok:
        log.warning("%s: %s; discarding the download", dest.name, detail)
        part.unlink(missing_ok=True)
        return False
    side = dest.with_name(dest.name + ".origin")
    write_json_atomic(side, {"url": url, "verified": detail})
    os.replace(part, dest)
    return True


def _range_start(content_range: str) -> int:
    # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _bar(progress: bool, total, initial: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                mininterval=1.0, leave=False)
