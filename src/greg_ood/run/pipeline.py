"""Wiring shared by the stage scripts that compute with a model: params -> device, data splits, sources, models. No
math here. The stage front (arguments, params validation, error handling, paths) is :mod:`greg_ood.run.stagecli`,
re-exported here for these stages; a stage without a model (download, report) imports that module alone, so its code
deps (:mod:`greg_ood.run.codedeps`) stay free of this wiring."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import config as C
from .. import data as D
from .. import models, registry
from . import runguard, tracking
from .io import sha256_of
from .runtime import load_verified, load_weights, resolve_device, set_determinism
from .stagecli import load_config, paths, run_stage, setup_logging, stage_cli

__all__ = ["SuiteData", "aux_source", "build_model", "candidate_batch_size", "id_source", "init_runtime",
           "input_hashes", "load_config", "load_model", "paths", "run_stage", "setup_logging", "stage_cli",
           "suite_data"]


def init_runtime(cfg: C.Config, seed: int) -> torch.device:
    p = cfg.params.project
    set_determinism(seed, p.deterministic, p.num_threads)
    return resolve_device(p.device)


@dataclass
class SuiteData:
    id_train: "D.ArraySplit"
    id_test: "D.ArraySplit"
    ood: dict
    aux: Optional["D.ArraySplit"]
    mean: list
    std: list


def suite_data(cfg: C.Config, suite: str, *, aux: bool = True, ood: bool = True) -> SuiteData:
    s = cfg.suite(suite)
    ddir = Path(cfg.params.project.data_dir)
    d = s.data
    id_train = D.load_split(ddir, d.id.dataset, d.id.train_split, classes=d.id.classes)
    id_test = D.load_split(ddir, d.id.dataset, d.id.test_split, classes=d.id.classes)
    mean = list(d.mean) if d.mean is not None else [float(x) for x in id_train.mean]
    std = list(d.std) if d.std is not None else [float(x) for x in id_train.std]
    ood_sets = {}
    if ood:
        for o in d.ood:
            sp = D.load_split(ddir, o.dataset, o.split, classes=o.classes, relabel=False)
            if o.max_count is not None and len(sp.images) > o.max_count:
                idx = np.sort(np.random.RandomState(0).choice(len(sp.images), o.max_count, replace=False))
                sp = D.subset(sp, idx)
            ood_sets[o.name] = sp
    aux_split = D.load_split(ddir, d.aux.dataset, d.aux.split) if aux else None
    return SuiteData(id_train, id_test, ood_sets, aux_split, mean, std)


def build_model(cfg: C.Config, suite: str, arch: str, method: str) -> torch.nn.Module:
    """The suite's ``arch`` with the K classes plus the method's extra outputs (registry)."""
    s = cfg.suite(suite)
    kw = dict(s.arch_options.get(arch, {}))
    return models.build(arch, s.num_classes, in_channels=s.in_channels,
                        extra_outputs=registry.get(method).extra_outputs, **kw)


def load_model(path: Path, model: torch.nn.Module, device: torch.device, *, stage: str = "") -> torch.nn.Module:
    """Load a stage's weights file (``{"model": state_dict, ...}``) strictly, with weights_only=True, after checking
    it against the checksum written with it (a file without one, e.g. fetched from the DVC cache, loads unchecked).
    ``stage`` names the DVC stage that writes the file (for the fix in the error)."""
    fix = f"re-run the stage that writes it (`dvc repro -f {stage or '<stage>'}`)"
    if not Path(path).exists():
        raise runguard.StageError(f"{path}: model file missing; {fix}")
    ck = load_verified(path, map_location="cpu", required=False, fix=fix)
    load_weights(model, ck["model"])
    return model.to(device)


def id_source(sd: SuiteData, cfg: C.Config, suite: str, *, batch_size: int, seed: int, device, augment=True):
    """Device-resident arrays for small-image suites, a DataLoader over file lists for ImageNet."""
    a = cfg.suite(suite).data.augment
    return D.train_source(sd.id_train, batch_size=batch_size, device=device, mean=sd.mean, std=sd.std,
                          crop_padding=a.crop_padding if augment else 0, flip=a.flip and augment, seed=seed,
                          stream="id")


def candidate_batch_size(tcfg: C.TrainCfg, method: str, n_id: int, n_aux: int) -> int:
    """Aux rows drawn per step: C = pool/|D_in|*B for the methods that select from candidates (the GReg+ official
    rule; POEM scores the same candidate batch), else B_aux."""
    B = tcfg.batch_size
    if not registry.get(method).selects:
        return tcfg.aux_batch_size or B
    s = tcfg.sampling
    if s.candidate_batch:
        return s.candidate_batch
    pool = n_aux if s.pool == "all" else min(int(s.pool), n_aux)
    return max(2 * B, int(pool / n_id * B))


def aux_source(sd: SuiteData, cfg: C.Config, suite: str, *, batch_size: int, seed: int, device,
               indices: Optional[np.ndarray] = None):
    a = cfg.suite(suite).data.augment
    split = sd.aux
    if indices is not None and len(indices) < len(split.labels):
        split = D.subset(split, np.asarray(indices))
    return D.train_source(split, batch_size=batch_size, device=device, mean=sd.mean, std=sd.std,
                          crop_padding=a.crop_padding, flip=a.flip, seed=seed, stream="aux")


def input_hashes(cfg: C.Config, datasets: list[str], files: list[Path] = ()) -> dict[str, str]:
    """Content hashes of what a training stage reads: each prepared dataset's manifest (which lists the sha256 of its
    arrays) and each given file (a missing file counts as absent). Part of the checkpoint fingerprint."""
    ddir = Path(cfg.params.project.data_dir)
    out = {f"dataset:{d}": tracking.params_hash(D.read_manifest(ddir, d)) for d in sorted(set(datasets))}
    for f in files:
        out[f"file:{Path(f).as_posix()}"] = sha256_of(f) if Path(f).is_file() else "absent"
    return out
