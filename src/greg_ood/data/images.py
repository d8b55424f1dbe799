"""PIL-level image helpers shared by the converters: decoding from bytes, the test-time transforms of the CIFAR OOD
sets (resize of the shorter side, centre crop), archive member listing and safe extraction."""
from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from ..run.io import remove_stale_dirs

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_name(name: str) -> bool:
    base = os.path.basename(name)
    return not base.startswith(("._", ".")) and base.lower().endswith(IMAGE_EXTS)


class UnreadableImageError(OSError):
    """An image file that cannot be decoded (empty, truncated, not an image); the message names the file."""


def open_image(data: bytes | str | Path, mode: str = "RGB") -> Image.Image:
    """Decode an image (bytes or a file path) fully and convert it to ``mode``. A file that cannot be decoded
    raises :class:`UnreadableImageError` naming the path (bytes input keeps PIL's own exception)."""
    if isinstance(data, (bytes, bytearray)):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert(mode)
    try:
        with Image.open(data) as im:
            im.load()
            return im.convert(mode)
    except FileNotFoundError:
        raise UnreadableImageError(f"{data}: image file missing (deleted or moved after the dataset was "
                                   f"prepared?)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        size = os.path.getsize(data) if os.path.exists(data) else None
        what = "empty (0 bytes)" if size == 0 else f"{size:,} bytes"
        raise UnreadableImageError(f"{data}: cannot be decoded as an image ({what}; {type(e).__name__}: {e}); "
                                   f"the file is corrupt or truncated: replace it from the original archive or "
                                   f"delete it and prepare the dataset again") from None


def resize_shorter(im: Image.Image, size: int) -> Image.Image:
    """torchvision ``Resize(size)`` with an int: the shorter side becomes ``size``, the longer one
    ``int(size * long / short)``; bilinear (PIL's, which filters when shrinking)."""
    w, h = im.size
    if (w <= h and w == size) or (h <= w and h == size):
        return im
    if w < h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    return im.resize((nw, nh), Image.BILINEAR)


def center_crop(im: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop(size)`` (zero-pads first when the image is smaller)."""
    w, h = im.size
    if w < size or h < size:
        canvas = Image.new(im.mode, (max(w, size), max(h, size)))
        canvas.paste(im, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        im, (w, h) = canvas, canvas.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def to_array(im: Image.Image) -> np.ndarray:
    a = np.asarray(im, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def transform_32(im: Image.Image, rule: str, size: int = 32) -> tuple[np.ndarray, bool]:
    """One CIFAR-benchmark OOD image as uint8 size×size×3. Rules: ``resize_crop`` (Resize+CenterCrop),
    ``crop`` (CenterCrop), ``none`` (already size×size; anything else falls back to Resize+CenterCrop).
    Returns (array, whether the fallback was applied)."""
    fallback = False
    if rule == "resize_crop":
        im = center_crop(resize_shorter(im, size), size)
    elif rule == "crop":
        if min(im.size) < size:
            im, fallback = center_crop(resize_shorter(im, size), size), True
        else:
            im = center_crop(im, size)
    elif rule == "none":
        if im.size != (size, size):
            im, fallback = center_crop(resize_shorter(im, size), size), True
    else:
        raise ValueError(f"unknown transform rule {rule!r}")
    return to_array(im), fallback


# ----------------------------------------------------------------------------------------------------- archives
def iter_archive_images(path: Path, prefix: Optional[str] = None,
                        wanted: Optional[set[str]] = None) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the image members of a tar/zip archive, in archive order, streaming."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                n = info.filename
                if info.is_dir() or not is_image_name(n) or (prefix and not n.startswith(prefix)):
                    continue
                if wanted is not None and n not in wanted:
                    continue
                yield n, z.read(info)
        return
    with tarfile.open(path, "r|*") as tar:
        for m in tar:
            n = m.name[2:] if m.name.startswith("./") else m.name
            if not m.isfile() or not is_image_name(n) or (prefix and not n.startswith(prefix)):
                continue
            if wanted is not None and n not in wanted:
                continue
            f = tar.extractfile(m)
            if f is not None:
                yield n, f.read()


def list_archive_images(path: Path) -> list[str]:
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return [i.filename for i in z.infolist() if not i.is_dir() and is_image_name(i.filename)]
    with tarfile.open(path, "r:*") as tar:  # random access: an uncompressed tar is listed by seeking
        return [m.name[2:] if m.name.startswith("./") else m.name for m in tar
                if m.isfile() and is_image_name(m.name)]


def extract_archive(path: Path, dest: Path) -> Path:
    """Unpack ``path`` into ``dest`` atomically (a temporary sibling folder renamed at the end); members that would
    land outside ``dest`` (absolute paths, ``..``, links out) are refused. An existing ``dest`` is kept as is."""
    dest = Path(dest)
    if dest.is_dir():
        return dest
    remove_stale_dirs(dest.parent, rf"{re.escape(dest.name)}\.tmp(?P<pid>\d+)")  # left by a killed extraction
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    target = (tmp / info.filename).resolve()
                    if not str(target).startswith(str(tmp.resolve()) + os.sep) and target != tmp.resolve():
                        raise ValueError(f"{path}: member {info.filename!r} escapes the extraction folder")
                z.extractall(tmp)
        else:
            with tarfile.open(path, "r:*") as tar:
                tar.extractall(tmp, filter="data")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, dest)
    return dest


def list_image_files(root: Path) -> list[str]:
    """Image files under ``root`` as sorted POSIX paths relative to ``root``."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            if is_image_name(fn):
                out.append(Path(dirpath, fn).relative_to(root).as_posix())
    out.sort()
    return out
