"""Batch sources for training and evaluation.

* :class:`DeviceArraySource` — a whole uint8 set held as one tensor on the training device; batches are gathered,
  augmented (random crop with zero padding + horizontal flip, batched) and normalised there.
* :class:`FileListSource` — ImageNet scale: a file list decoded by DataLoader workers (RandomResizedCrop(224) + flip
  for training, Resize(256) + CenterCrop(224) for testing).
* :func:`iter_eval` — normalised batches in order, no augmentation, for arrays or file lists.

Randomness is a pure function of ``(seed, stream, epoch[, step])``: the epoch order comes from a generator seeded by
``(seed, stream, "perm", epoch)``, the augmentation of a step from one seeded by ``(seed, stream, "aug", epoch,
step)``. A resumed run therefore reproduces the exact batches without any saved RNG state.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from .augment import apply_crop_flip, crop_flip_params, derive_seed, generator, normalize
from .images import center_crop, open_image, resize_shorter

IMAGENET_SIZE, IMAGENET_RESIZE = 224, 256


def _writable(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array torch may wrap (memory maps and read-only views are copied)."""
    if a.flags.c_contiguous and a.flags.writeable and not isinstance(a, np.memmap):
        return a
    return np.array(a, order="C")


def _steps(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


# ----------------------------------------------------------------------------------------------------- arrays
class DeviceArraySource:
    """Training batches from an in-memory uint8 N×H×W×C array, entirely on ``device``."""

    def __init__(self, images, labels, *, batch_size: int, device, mean: Sequence[float], std: Sequence[float],
                 crop_padding: int = 0, flip: bool = False, seed: int = 0, stream: str = "id",
                 drop_last: bool = True):
        if isinstance(images, FileImages):
            raise TypeError("DeviceArraySource holds a whole array on the device; for a file-list split use "
                            "FileListSource (or greg_ood.data.train_source, which picks the right one)")
        arr = np.asarray(images)
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise ValueError(f"images must be uint8 N×H×W×C, got {arr.dtype} {arr.shape}")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.device = torch.device(device)
        self.n = int(arr.shape[0])
        self.batch_size = int(batch_size)
        self.drop_last = drop_last
        self.steps_per_epoch = _steps(self.n, self.batch_size, drop_last)
        if self.steps_per_epoch <= 0:
            raise ValueError(f"stream {stream!r}: {self.n} images is less than one batch of {batch_size} "
                             f"(drop_last); lower the batch size")
        self.data = torch.from_numpy(_writable(arr)).to(self.device).permute(0, 3, 1, 2).contiguous()
        lab = np.full(self.n, -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if lab.shape != (self.n,):
            raise ValueError(f"{lab.shape} labels for {self.n} images")
        self.labels = torch.from_numpy(lab).to(self.device)
        self.mean, self.std = list(mean), list(std)
        normalize(self.data[:1], self.mean, self.std)  # validates mean/std against the channel count
        self.crop_padding, self.flip = int(crop_padding), bool(flip)
        self.seed, self.stream = int(seed), str(stream)
        self._perm_epoch: Optional[int] = None
        self._perm: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.n

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch ``epoch`` (on ``device``)."""
        if self._perm_epoch != epoch:
            p = torch.randperm(self.n, generator=generator(self.seed, self.stream, "perm", int(epoch)))
            self._perm, self._perm_epoch = p.to(self.device), epoch
        return self._perm

    def indices(self, epoch: int, step: int) -> torch.Tensor:
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside 0..{self.steps_per_epoch - 1}")
        return self.permutation(epoch)[step * self.batch_size:(step + 1) * self.batch_size]

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32 B×C×H×W normalised, y int64 B), both on ``device``."""
        idx = self.indices(epoch, step)
        x = self.data[idx]
        if self.crop_padding > 0 or self.flip:
            g = generator(self.seed, self.stream, "aug", int(epoch), int(step))
            dy, dx, fl = crop_flip_params(x.shape[0], self.crop_padding, self.flip, g)
            x = apply_crop_flip(x, dy, dx, fl, self.crop_padding)
        return normalize(x, self.mean, self.std), self.labels[idx]

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(start_step, self.steps_per_epoch):
            yield self.batch(epoch, step)


def iter_eval(images, *, batch_size: int, device, mean: Sequence[float], std: Sequence[float],
              num_workers: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Normalised float32 N×C×H×W batches in order, no augmentation. ``images``: a uint8 N×H×W×C array/memmap,
    or a :class:`FileImages` (decoded by workers with Resize(256) -> CenterCrop(224))."""
    device = torch.device(device)
    if isinstance(images, FileImages):
        yield from _iter_files_eval(images, batch_size=batch_size, device=device, mean=mean, std=std,
                                    num_workers=num_workers)
        return
    n = len(images)
    for i in range(0, n, batch_size):
        chunk = _writable(np.asarray(images[i:i + batch_size]))
        if chunk.dtype != np.uint8 or chunk.ndim != 4:
            raise ValueError(f"images must be uint8 N×H×W×C, got {chunk.dtype} {chunk.shape}")
        x = torch.from_numpy(chunk).to(device, non_blocking=True).permute(0, 3, 1, 2)
        yield normalize(x, mean, std)


# ----------------------------------------------------------------------------------------------------- file lists
def random_resized_crop_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a RandomResizedCrop with torchvision's sampling rule (10 tries, then a centred crop
    clamped to the ratio range), drawn from ``rng``."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def decode_train(path: Union[str, Path], aug_seed: int, size: int = IMAGENET_SIZE) -> np.ndarray:
    from PIL import Image

    rng = random.Random(aug_seed)
    im = open_image(path)
    left, top, w, h = random_resized_crop_box(im.size[0], im.size[1], rng)
    im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    a = np.asarray(im, dtype=np.uint8)
    if rng.random() < 0.5:
        a = a[:, ::-1]
    return np.array(a, order="C")  # a writable copy


def decode_test(path: Union[str, Path], size: int = IMAGENET_SIZE, resize: int = IMAGENET_RESIZE) -> np.ndarray:
    return np.array(center_crop(resize_shorter(open_image(path), resize), size), dtype=np.uint8)


class FileImages:
    """A lazy image array over files: ``len``, integer indexing (decoded H×W×3 uint8), slice/array indexing (another
    FileImages) and ``np.asarray`` (decodes all). Test transform: Resize(resize) -> CenterCrop(size)."""

    def __init__(self, root: Union[str, Path], files: Sequence[str], size: int = IMAGENET_SIZE,
                 resize: int = IMAGENET_RESIZE):
        self.root, self.files, self.size, self.resize = Path(root), list(files), size, resize

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.size, self.size, 3)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return decode_test(self.root / self.files[int(idx)], self.size, self.resize)
        if isinstance(idx, slice):
            return FileImages(self.root, self.files[idx], self.size, self.resize)
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return FileImages(self.root, [self.files[int(i)] for i in idx], self.size, self.resize)

    def __array__(self, dtype=None, copy=None):
        a = np.stack([self[i] for i in range(len(self))]) if len(self) else np.zeros(self.shape, np.uint8)
        return a.astype(dtype) if dtype is not None else a


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, root: Path, files: Sequence[str], labels: np.ndarray, train: bool, size: int, resize: int):
        self.root, self.files, self.labels = root, list(files), labels
        self.train, self.size, self.resize = train, size, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        idx, aug_seed = item if isinstance(item, tuple) else (item, 0)
        p = self.root / self.files[idx]
        a = decode_train(p, aug_seed, self.size) if self.train else decode_test(p, self.size, self.resize)
        return torch.from_numpy(a).permute(2, 0, 1), int(self.labels[idx])


class _EpochBatches(torch.utils.data.Sampler):
    """Yields the (index, augmentation seed) batches of one epoch from ``start_step``; re-targeted between
    iterations so persistent workers survive across epochs."""

    def __init__(self, owner: "FileListSource"):
        self.owner, self.epoch, self.start = owner, 0, 0

    def __iter__(self):
        o = self.owner
        order = o.order(self.epoch)
        for step in range(self.start, o.steps_per_epoch):
            idx = order[step * o.batch_size:(step + 1) * o.batch_size]
            yield [(int(i), derive_seed(o.seed, o.stream, "aug", self.epoch, step, k)) for k, i in enumerate(idx)]

    def __len__(self) -> int:
        return max(0, self.owner.steps_per_epoch - self.start)


class FileListSource:
    """Training (or ordered test) batches decoded from files by DataLoader workers.

    ``train=True``: a fresh order each epoch and RandomResizedCrop(224) + horizontal flip, each sample's draw seeded
    by ``(seed, stream, "aug", epoch, step, position)`` so the result does not depend on which worker decodes it.
    ``train=False``: file order, Resize(256) -> CenterCrop(224). ``iter_epoch(epoch, start_step)`` resumes by
    starting the sampler at ``start_step``; ``batch(epoch, step)`` serves sequential calls from a running iterator
    (so prefetching workers stay busy) and restarts it for any other position."""

    def __init__(self, files, labels=None, *, root=None, batch_size: int, device, mean: Sequence[float],
                 std: Sequence[float], train: bool = True, seed: int = 0, stream: str = "id",
                 drop_last: Optional[bool] = None, num_workers: Optional[int] = None, prefetch_factor: int = 4,
                 pin_memory: Optional[bool] = None, persistent_workers: bool = True, size: int = IMAGENET_SIZE,
                 resize: int = IMAGENET_RESIZE):
        if hasattr(files, "files") and hasattr(files, "root"):  # a FileListSplit
            root = files.root if root is None else root
            labels = files.labels if labels is None else labels
            files = files.files
        if root is None:
            raise ValueError("root is required with a plain file list")
        self.root, self.files = Path(root), list(files)
        self.labels = np.full(len(self.files), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        if len(self.labels) != len(self.files):
            raise ValueError(f"{len(self.labels)} labels for {len(self.files)} files")
        self.batch_size, self.device = int(batch_size), torch.device(device)
        self.mean, self.std = list(mean), list(std)
        self.train, self.seed, self.stream = bool(train), int(seed), str(stream)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.steps_per_epoch = _steps(len(self.files), self.batch_size, self.drop_last)
        if self.steps_per_epoch <= 0:
            raise ValueError(f"stream {stream!r}: {len(self.files)} files is less than one batch of {batch_size}")
        workers = min(8, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self._sampler = _EpochBatches(self)
        kw = dict(num_workers=workers, pin_memory=(self.device.type == "cuda") if pin_memory is None else pin_memory)
        if workers > 0:
            kw.update(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers)
        self._loader = torch.utils.data.DataLoader(
            _FileDataset(self.root, self.files, self.labels, self.train, size, resize),
            batch_sampler=self._sampler, **kw)
        self._cursor: Optional[tuple[int, int, Iterator]] = None

    def __len__(self) -> int:
        return len(self.files)

    def order(self, epoch: int) -> np.ndarray:
        if not self.train:
            return np.arange(len(self.files))
        return torch.randperm(len(self.files), generator=generator(self.seed, self.stream, "perm", int(epoch))).numpy()

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._cursor = None
        yield from self._run(epoch, start_step)

    def _run(self, epoch: int, start_step: int):
        self._sampler.epoch, self._sampler.start = int(epoch), int(start_step)
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=True)
            yield normalize(x, self.mean, self.std), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._cursor is not None:
            self._cursor[2].close()
            self._cursor = None
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader._iterator = None

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside 0..{self.steps_per_epoch - 1}")
        if self._cursor is None or self._cursor[:2] != (epoch, step):
            self._cursor = (epoch, step, self._run(epoch, step))
        it = self._cursor[2]
        out = next(it)
        self._cursor = (epoch, step + 1, it) if step + 1 < self.steps_per_epoch else None
        return out


def _iter_files_eval(images: FileImages, *, batch_size, device, mean, std, num_workers):
    workers = min(8, os.cpu_count() or 1) if num_workers is None else int(num_workers)
    ds = _FileDataset(images.root, images.files, np.full(len(images), -1, np.int64), False, images.size,
                      images.resize)
    kw = dict(num_workers=workers, pin_memory=device.type == "cuda")
    if workers > 0:
        kw["prefetch_factor"] = 4
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, **kw)
    for x, _ in loader:
        yield normalize(x.to(device, non_blocking=True), mean, std)


def train_source(split, *, batch_size: int, device, mean, std, crop_padding: int = 0, flip: bool = False,
                 seed: int = 0, stream: str = "id", **file_kw):
    """The right training source for a loaded split: :class:`DeviceArraySource` for arrays,
    :class:`FileListSource` (RandomResizedCrop + flip) for file lists."""
    if hasattr(split, "files"):
        return FileListSource(split, batch_size=batch_size, device=device, mean=mean, std=std, train=True,
                              seed=seed, stream=stream, **file_kw)
    return DeviceArraySource(split.images, split.labels, batch_size=batch_size, device=device, mean=mean, std=std,
                             crop_padding=crop_padding, flip=flip, seed=seed, stream=stream)
