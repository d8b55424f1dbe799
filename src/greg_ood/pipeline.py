"""Wiring shared by the stage scripts: params -> device, data splits, sources, models. No math here."""
from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import config as C
from . import data as D
from . import models, registry, runguard, tracking
from .io import sha256_of
from .paths import Paths
from .trainer import load_verified, load_weights, resolve_device, set_determinism

log = logging.getLogger("greg_ood")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)


def stage_cli(description: Optional[str], *, arch: bool = False, experiment: bool = False,
              pretrained: bool = False, argv: Optional[list[str]] = None) -> tuple[argparse.Namespace, C.Config]:
    """The common front of every stage script: parse ``--suite`` (plus ``--arch``; plus ``--method``, ``--seed`` and
    ``--lambda-grad`` for one experiment; with ``pretrained``, ``--pretrained`` may replace ``--method`` and
    ``--seed``), set up logging and validate ``params.yaml`` (exit 2 naming the bad key)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--suite", required=True)
    ap.add_argument("-v", "--verbose", action="store_true", help="show the traceback with an error")
    if experiment:
        who = ap.add_mutually_exclusive_group(required=True) if pretrained else ap
        who.add_argument("--method", required=not pretrained, choices=registry.trained())
        if pretrained:
            who.add_argument("--pretrained", action="store_true", help="the pretrained model of --arch, not fine-tuned")
    if arch or experiment:
        ap.add_argument("--arch", required=True)
    if experiment:
        ap.add_argument("--seed", required=not pretrained, type=int, help="required with --method")
        ap.add_argument("--lambda-grad", type=float, default=None,
                        help="a point of the suite's lambda_grad ablation (overrides loss.lambda_grad)")
    args = ap.parse_args(argv)
    if experiment and args.method and args.seed is None:
        ap.error("--seed is required with --method")
    setup_logging()
    cfg = load_config()
    try:
        cfg.suite(args.suite)
    except C.ConfigError as e:
        print(f"error: --suite: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return args, cfg


def load_config(path: str = "params.yaml") -> C.Config:
    """Validate params.yaml; on error print the message (naming the key) and exit 2 before any compute."""
    try:
        return C.load(path)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def init_runtime(cfg: C.Config, seed: int) -> torch.device:
    p = cfg.params.project
    set_determinism(seed, p.deterministic, p.num_threads)
    return resolve_device(p.device)


def paths(cfg: C.Config) -> Paths:
    return Paths(".", cfg.params.project.data_dir)


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


def run_stage(main: Callable[[], None], argv: Optional[list[str]] = None) -> None:
    """Run a stage's ``main``: a problem the user can fix ends it with one sentence on stderr and exit status 2 (the
    traceback too with ``-v``); SIGTERM/SIGINT end it with ``128 + signum`` after its run was marked KILLED."""
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    runguard.install_signal_handlers()
    runguard.die_with_parent()
    try:
        main()
    except runguard.StageKilled as e:
        print(f"error: {e}; the last checkpoint is kept, re-run to continue", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except (runguard.StageError, tracking.TrackingError, D.PreparedDataError, C.ConfigError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in _UNWRITABLE:
            raise
        if verbose:
            traceback.print_exc()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None


_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in _UNWRITABLE:
        return (f"{e.filename or 'a file'}: cannot write there ({e.strerror}); make that folder writable, or point "
                "project.data_dir (params.yaml) at a writable folder for the data")
    return str(e)
