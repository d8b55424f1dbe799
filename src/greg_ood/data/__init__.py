"""Data layer: dataset registry, resumable verified downloads, conversion to the prepared format
(docs/CONTRACTS.md), checked loading, and on-device batch sources.

    prepare(name, data_dir=..., options=...)        -> manifest (dict)
    load_split(data_dir, name, split, classes=...)  -> ArraySplit | FileListSplit
    DeviceArraySource / FileListSource / iter_eval  -> normalised batches
    overlap_guard(aux, {name: split})               -> exact-duplicate counts
"""
from . import augment
from .augment import derive_seed, normalize, random_crop_flip
from .datasets import (DeviceArraySource, FileImages, FileListSource, iter_eval, random_resized_crop_box,
                       train_source)
from .download import DownloadError, ManualDownloadRequired, fetch, file_digest, verify_file
from .build import channel_stats
from .prepare import (ArraySplit, FileListSplit, PreparedDataError, load_split, overlap_guard, prepare, read_manifest,
                      subset)
from .sources import DATASETS, DatasetSpec, Source, option_defaults, resolve_options
from .check import suite_datasets

__all__ = [
    "DATASETS", "DatasetSpec", "Source", "option_defaults", "resolve_options",
    "prepare", "load_split", "read_manifest", "subset", "overlap_guard", "channel_stats",
    "ArraySplit", "FileListSplit", "PreparedDataError",
    "fetch", "file_digest", "verify_file", "DownloadError", "ManualDownloadRequired",
    "DeviceArraySource", "FileListSource", "FileImages", "iter_eval", "train_source", "random_resized_crop_box",
    "augment", "normalize", "random_crop_flip", "derive_seed", "suite_datasets",
]
