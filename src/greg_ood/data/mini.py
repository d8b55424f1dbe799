"""The offline ``mini`` benchmark, built only from data that ships with installed packages (no network):

* ``fashion_mnist`` (ID): the idx files of Debian's ``dataset-fashion-mnist`` (found with ``dpkg -L``), else the
  official downloads.
* ``skimage_crops`` (auxiliary): seeded random crops of the photographs bundled in scikit-image's wheel.
* OOD: ``digits`` (scikit-learn), ``textures`` (scikit-image's brick/grass/gravel, never used for aux crops),
  ``faces`` (scikit-image's LFW subset), ``gaussian_noise``, ``uniform_noise``.

Every image is read from the file inside the installed package (``skimage/data/...``), never through scikit-image's
pooch fetcher, so nothing here can touch the network. Every set is 28×28×1 uint8.
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .build import BuildContext
from .sources import FASHION_MNIST_CLASSES

SIZE = 28

#: natural photographs bundled with scikit-image, used for the auxiliary crops
AUX_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "hubble_deep_field.jpg",
              "ihc.png", "moon.png", "motorcycle_left.png", "page.png", "rocket.jpg", "retina.jpg",
              "microaneurysms.png", "cell.png", "clock_motion.png", "text.png")
#: texture photographs: the ``textures`` OOD set only (disjoint from AUX_PHOTOS)
TEXTURE_PHOTOS = ("brick.png", "grass.png", "gravel.png")
FACES_FILE = "lfw_subset.npy"


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def bundled_file(name: str) -> Path:
    """Path of a file shipped inside scikit-image's wheel; an error if this version does not bundle it."""
    p = skimage_data_dir() / name
    if not p.is_file():
        raise FileNotFoundError(f"{p}: scikit-image does not bundle {name!r} in this version; the mini suite only "
                                f"uses files shipped in the wheel (never downloaded through pooch)")
    return p


def _registry_sha256(name: str) -> str | None:
    try:
        from skimage.data._registry import registry
    except ImportError:
        return None
    return registry.get(f"data/{name}")


def _file_record(name: str) -> dict:
    p = bundled_file(name)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    reg = _registry_sha256(name)
    return {"file": f"skimage/data/{name}", "sha256": digest,
            "matches_skimage_registry": (reg == digest) if reg else None}


# ----------------------------------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip or plain) of unsigned bytes as an array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ValueError(f"{path}: {len(data) - offset} data bytes for shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def build_fashion_mnist(ctx: BuildContext) -> None:
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(ctx.fetch(f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(ctx.fetch(f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
        if x.ndim != 3 or x.shape[1:] != (SIZE, SIZE) or len(x) != len(y):
            raise ValueError(f"fashion_mnist/{split}: images {x.shape}, labels {y.shape}")
        ctx.write_split(split, x[..., None], y, list(FASHION_MNIST_CLASSES))


# ----------------------------------------------------------------------------------------------------- crops
def random_crops(photos: Sequence[Image.Image], count: int, seed: int, *, min_size: int = 24,
                 max_size: int = 256, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``count`` crops: a uniformly chosen photo, a square of uniform side in [min_size, min(max_size, photo)],
    a uniform position, resized (antialiased bilinear) to size×size, then flipped left-right and up-down each with
    probability 1/2. Grayscale uint8 N×size×size×1 and the source index of each crop."""
    if count <= 0:
        raise ValueError("count must be positive")
    rng = np.random.RandomState(seed)
    src = rng.randint(0, len(photos), size=count)
    u_side, u_x, u_y = rng.random_sample(count), rng.random_sample(count), rng.random_sample(count)
    flips = rng.random_sample((count, 2)) < 0.5
    out = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        im = photos[src[i]]
        w, h = im.size
        hi = max(min_size, min(max_size, w, h))
        lo = min(min_size, hi)
        side = lo + int(u_side[i] * (hi - lo + 1))
        side = min(side, hi)
        x0 = int(u_x[i] * (w - side + 1))
        y0 = int(u_y[i] * (h - side + 1))
        a = np.asarray(im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side)))
        if flips[i, 0]:
            a = a[:, ::-1]
        if flips[i, 1]:
            a = a[::-1, :]
        out[i] = a
    return out[..., None], src


def _gray(name: str) -> Image.Image:
    with Image.open(bundled_file(name)) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return im.convert("L")


def _crop_set(ctx: BuildContext, split: str, files: Sequence[str]) -> None:
    o = ctx.options
    photos = [_gray(f) for f in files]
    imgs, src = random_crops(photos, int(o["count"]), int(o["seed"]), min_size=int(o["min_size"]),
                             max_size=int(o["max_size"]))
    ctx.manifest["source_files"] = [_file_record(f) for f in files]
    ctx.write_split(split, imgs, None, (), crops_per_source={f: int((src == i).sum()) for i, f in enumerate(files)})


def build_skimage_crops(ctx: BuildContext) -> None:
    _crop_set(ctx, "train", AUX_PHOTOS)


def build_textures(ctx: BuildContext) -> None:
    _crop_set(ctx, "test", TEXTURE_PHOTOS)


# ----------------------------------------------------------------------------------------------------- others
def _resize_stack(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR)) for a in images])[..., None]


def build_digits(ctx: BuildContext) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()  # bundled with scikit-learn (no download)
    small = np.clip(np.rint(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    ctx.manifest["source_files"] = [{"file": "sklearn/datasets/data/digits.csv.gz", "range": "0..16 -> 0..255"}]
    ctx.write_split("test", _resize_stack(small), np.asarray(d.target, dtype=np.int64), [str(i) for i in range(10)])


def build_faces(ctx: BuildContext) -> None:
    a = np.load(bundled_file(FACES_FILE))  # 200×25×25 in [0, 1]: 100 faces, then 100 non-faces
    faces = np.clip(np.rint(a[:100] * 255.0), 0, 255).astype(np.uint8)
    ctx.manifest["source_files"] = [_file_record(FACES_FILE)]
    ctx.write_split("test", _resize_stack(faces), None, (), note="the 100 face images (rows 0-99) only")


def build_gaussian_noise(ctx: BuildContext) -> None:
    o = ctx.options
    x = np.random.RandomState(int(o["seed"])).normal(float(o["mean"]), float(o["std"]),
                                                     size=(int(o["count"]), SIZE, SIZE, 1))
    ctx.write_split("test", np.clip(np.rint(x), 0, 255).astype(np.uint8))


def build_uniform_noise(ctx: BuildContext) -> None:
    o = ctx.options
    x = np.random.RandomState(int(o["seed"])).randint(0, 256, size=(int(o["count"]), SIZE, SIZE, 1))
    ctx.write_split("test", x.astype(np.uint8))
