"""Typed schema of ``params.yaml``; every stage validates the whole file before any compute.

An unknown key, a misspelled key, a wrong type or an out-of-range value raises :class:`ConfigError`, whose message names
the dotted key, what was given, what is allowed, and (for typos) the closest valid key. Per-method settings are a deep
merge of the suite's ``train`` section, the method's defining settings and ``method_params.<method>`` (the order and
the reason for it: :mod:`greg_ood.registry`); the merged result is validated too, so a bad override is caught even for
methods that the current stage does not run. Method names are checked against the registry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from .. import archs, registry
from .errors import UserError
from .config_errors import _arch_option_names, _check_names, _format_errors, _has
from ..registry import check_trained
from ..settings import LossCfg, PoemCfg, SamplingCfg, _Model

#: a method name in params.yaml, checked against the registry when the params are validated (so a new entry is valid
#: at once)
TrainMethod = Annotated[str, AfterValidator(check_trained)]

ARCHS = archs.NAMES
SCORES = ("energy", "msp", "max_logit", "odin", "mahalanobis", "absent_class")
SUITES = ("mini", "fmnist", "cifar10", "cifar100", "imagenet")


class ConfigError(UserError, ValueError):
    """A problem in params.yaml (or a value derived from it); the message names the key and the fix."""


# --------------------------------------------------------------------------------------------------------- sections
class ProjectCfg(_Model):
    device: str = "auto"
    deterministic: bool = True
    num_threads: int = Field(0, ge=0)
    data_dir: str = "data"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be one of auto, cpu, cuda, cuda:N, mps")


class MlflowCfg(_Model):
    experiment_prefix: str = "greg-ood"
    log_every: int = Field(10, ge=1)


class OptimizerCfg(_Model):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)


class ScheduleCfg(_Model):
    name: Literal["cosine", "step", "constant"] = "cosine"
    #: cosine: multiplier 1 -> final_factor, stepped per iteration (energy_ood / the official GReg code use 1e-6/lr)
    final_lr: float = Field(1e-6, ge=0)
    #: step: multiply by gamma at these epochs
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        if any(m <= 0 for m in v) or v != sorted(v):
            raise ValueError("must be positive epochs in increasing order")
        return v


class TrainCfg(_Model):
    init: Literal["pretrained", "scratch"] = "pretrained"
    epochs: int = Field(20, gt=0)
    #: cap on steps per epoch (None = a full pass over the ID training set); for short CI / smoke runs
    steps_per_epoch: Optional[int] = Field(None, gt=0)
    batch_size: int = Field(64, gt=0)
    #: auxiliary rows per step for random-sampling methods (None = batch_size)
    aux_batch_size: Optional[int] = Field(None, gt=0)
    optimizer: OptimizerCfg = Field(default_factory=OptimizerCfg)
    schedule: ScheduleCfg = Field(default_factory=ScheduleCfg)
    loss: LossCfg = Field(default_factory=LossCfg)
    sampling: SamplingCfg = Field(default_factory=SamplingCfg)
    #: POEM's posterior settings; set for the methods that use them (registry ``settings``), else None
    poem: Optional[PoemCfg] = None
    checkpoint_every: int = Field(200, gt=0)
    #: every N steps also measure the true mean ||grad_x E|| on the batch (eval-mode BN); 0 = off
    gradnorm_every: int = Field(50, ge=0)
    #: multi-process training: number of processes for torchrun (1 = plain single process)
    nproc: int = Field(1, ge=1)
    sync_batchnorm: bool = False

    @model_serializer(mode="wrap")
    def _without_unset_poem(self, handler):
        """Dump without ``poem`` when it is None: the other methods' recorded settings (and the hashes made from
        them) stay as they were before POEM existed."""
        out = handler(self)
        if isinstance(out, dict) and self.poem is None:
            out.pop("poem", None)
        return out


class PretrainCfg(_Model):
    epochs: int = Field(100, gt=0)
    steps_per_epoch: Optional[int] = Field(None, gt=0)
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerCfg = Field(default_factory=OptimizerCfg)
    schedule: ScheduleCfg = Field(default_factory=ScheduleCfg)
    seed: int = 0
    checkpoint_every: int = Field(500, gt=0)


class SetRef(_Model):
    dataset: str
    split: str = "test"
    classes: Optional[list[int]] = None
    #: evaluate at most this many images (seeded subset); None = the whole set
    max_count: Optional[int] = Field(None, gt=0)


class OodSet(SetRef):
    name: str
    #: what the set is, declared before any result: natural images (photographs, scans) or generated noise; the
    #: report's natural-image mean (the paper's kind of mean) averages the natural ones
    kind: Optional[Literal["natural", "noise"]] = None  # None: noise when named like a noise dataset
    #: near-OOD (the ID dataset's own held-out classes, or semantically close) or far-OOD; recorded, not computed
    distance: Optional[Literal["near", "far"]] = None


class IdRef(_Model):
    dataset: str
    classes: Optional[list[int]] = None
    train_split: str = "train"
    test_split: str = "test"


class AuxRef(_Model):
    dataset: str  # an auxiliary dataset of the registry: tinyimages300k, tin597 (OpenOOD v1.5's TIN-597), ...
    split: str = "train"

    @field_validator("dataset")
    @classmethod
    def _aux_dataset(cls, v: str) -> str:
        from ..data.sources import DATASETS

        _check_names("unknown auxiliary dataset", [v], sorted(k for k, d in DATASETS.items() if "aux" in d.role))
        return v


class AugmentCfg(_Model):
    crop_padding: int = Field(4, ge=0)
    flip: bool = True


class DataCfg(_Model):
    id: IdRef
    aux: AuxRef
    ood: list[OodSet] = Field(min_length=1)
    headline_set: Optional[str] = None
    augment: AugmentCfg = Field(default_factory=AugmentCfg)
    #: "id_train" = per-channel statistics of the ID training split; or explicit values
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None

    @model_validator(mode="after")
    def _check(self) -> "DataCfg":
        names = [o.name for o in self.ood]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate OOD set names {sorted(dup)}")
        if self.headline_set is not None and self.headline_set not in names:
            raise ValueError(f"headline_set {self.headline_set!r} is not one of the OOD sets {names}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then the ID training statistics are used)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class OdinCfg(_Model):
    temperature: float = Field(1000.0, gt=0)
    epsilon: float = Field(0.0014, ge=0)


class EvalCfg(_Model):
    scores: list[Literal[SCORES]] = Field(default_factory=lambda: ["energy", "msp", "max_logit"], min_length=1)
    primary: Literal[SCORES] = "energy"
    positive: Literal["id", "ood"] = "id"
    fpr_rule: Literal["closest", "quantile"] = "closest"
    tpr: float = Field(0.95, gt=0, lt=1)
    batch_size: int = Field(512, gt=0)
    odin: OdinCfg = Field(default_factory=OdinCfg)
    #: ID training images used to fit Mahalanobis statistics
    mahalanobis_fit_count: int = Field(10000, gt=0)
    #: "paper" (always: the suite's OOD sets), optionally "openood_v1_5" (OpenOOD v1.5's near/far sets; openood.py)
    protocols: list[Literal["paper", "openood_v1_5"]] = Field(default_factory=lambda: ["paper"])

    @model_validator(mode="after")
    def _primary(self) -> "EvalCfg":
        if self.primary not in self.scores:
            raise ValueError(f"primary score {self.primary!r} must be listed in scores {self.scores}")
        if "paper" not in self.protocols or len(set(self.protocols)) != len(self.protocols):
            raise ValueError(f"protocols {self.protocols} must list 'paper' (the suite's own evaluation, always run) "
                             "and each protocol once, e.g. [paper, openood_v1_5]")
        return self

    @model_serializer(mode="wrap")
    def _without_default_protocols(self, handler):
        """Dump without ``protocols`` when it is ``[paper]``: recorded settings stay as before the key existed."""
        out = handler(self)
        if isinstance(out, dict) and self.protocols == ["paper"]:
            out.pop("protocols", None)
        return out


class SelectCfg(_Model):
    #: size of the auxiliary subset kept for training: "all" keeps the whole pool (the paper's behaviour)
    size: Union[Literal["all"], int] = "all"
    n_clusters: int = Field(1000, gt=0)
    normalization: Literal["norm", "normBatch", "normFeature", "latent"] = "norm"
    n_init: int = Field(1, gt=0)
    two_way: bool = True
    batch_size: int = Field(1024, gt=0)
    seed: int = 0


class AblationCfg(_Model):
    method: TrainMethod = "greg"
    arch: Optional[str] = None
    lambda_grad: list[float] = Field(default_factory=list)
    seeds: Optional[list[int]] = None

    @field_validator("lambda_grad")
    @classmethod
    def _nonneg(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v):
            raise ValueError("lambda_grad values must be >= 0")
        return v


class GradAblationCfg(_Model):
    #: pairs (method without, method with the gradient term) shown side by side in the report; default: registry
    pairs: list[tuple[TrainMethod, TrainMethod]] = Field(default_factory=registry.penalty_pairs)

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs_from_yaml(cls, v):
        """YAML has no tuples: a pair is written as a two-item list."""
        return [tuple(p) if isinstance(p, list) else p for p in v] if isinstance(v, list) else v


class CertifyCfg(_Model):
    methods: list[TrainMethod] = Field(default_factory=lambda: ["energy", "greg"])
    #: seeds whose models are certified (None: every seed of the suite, so the claims table can pair them)
    seeds: Optional[list[int]] = None
    eps: float = Field(1.0, gt=0)
    count: int = Field(500, gt=0)
    batch_size: int = Field(128, gt=0)


class SuiteCfg(_Model):
    data: DataCfg
    num_classes: int = Field(gt=1)
    in_channels: int = Field(3, gt=0)
    archs: list[Literal[ARCHS]] = Field(min_length=1)
    arch_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    methods: list[TrainMethod] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    pretrain: PretrainCfg = Field(default_factory=PretrainCfg)
    select: SelectCfg = Field(default_factory=SelectCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    method_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    ablation: AblationCfg = Field(default_factory=AblationCfg)
    grad_ablation: GradAblationCfg = Field(default_factory=GradAblationCfg)
    certify: CertifyCfg = Field(default_factory=CertifyCfg)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SuiteCfg":
        for arch, opts in self.arch_options.items():
            _check_names("arch_options: unknown architecture", [arch], ARCHS)
            _check_names(f"arch_options.{arch}: unknown option", opts, _arch_option_names(arch))
        unknown = set(self.method_params) - set(registry.trained())
        if unknown:
            raise ValueError(f"method_params has unknown methods {sorted(unknown)}; allowed: "
                             f"{list(registry.trained())}")
        if self.ablation.arch is not None and self.ablation.arch not in self.archs:
            raise ValueError(f"ablation.arch {self.ablation.arch!r} is not in archs {self.archs}")
        for a, b in self.grad_ablation.pairs:
            for m in (a, b):
                if m not in self.methods:
                    raise ValueError(f"grad_ablation pair method {m!r} is not trained by this suite (methods: "
                                     f"{self.methods}); add it to methods or remove the pair")
        for m in self.certify.methods:
            if m not in self.methods:
                raise ValueError(f"certify method {m!r} is not in methods {self.methods}")
        for sd in self.certify.seeds or []:
            if sd not in self.seeds:
                raise ValueError(f"certify seed {sd} is not in seeds {self.seeds}")
        from ..data.openood import protocol_datasets

        try:
            protocol_datasets(self)
        except ValueError as e:
            raise ValueError(f"eval.protocols: {e}; remove openood_v1_5 from this suite") from None
        return self


class Params(_Model):
    project: ProjectCfg = Field(default_factory=ProjectCfg)
    mlflow: MlflowCfg = Field(default_factory=MlflowCfg)
    #: per-dataset preparation options (see greg_ood.data); keys are dataset names
    datasets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    suites: dict[str, SuiteCfg]

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from ..data.sources import DATASETS, option_defaults

        for name, opts in v.items():
            _check_names("unknown dataset", [name], sorted(DATASETS))
            _check_names(f"{name}: unknown option", opts or {}, sorted(option_defaults(DATASETS[name])))
        return v

    @field_validator("suites")
    @classmethod
    def _suites(cls, v: dict[str, SuiteCfg]) -> dict[str, SuiteCfg]:
        bad = set(v) - set(SUITES)
        if bad:
            raise ValueError(f"unknown suites {sorted(bad)}; allowed: {list(SUITES)}")
        return v

    @model_validator(mode="after")
    def _downloads_declared(self) -> "Params":
        """Every dataset a suite reads (ID, auxiliary pool, OOD sets, the extra protocols' sets) needs a download
        stage: a ``datasets`` entry (when ``datasets`` is given). Checked here, before any stage computes."""
        from ..data.openood import protocol_datasets

        for name, s in self.suites.items() if self.datasets else ():
            reads = [("data.id.dataset", s.data.id.dataset), ("data.aux.dataset", s.data.aux.dataset)]
            reads += [(f"data.ood ({o.name}).dataset", o.dataset) for o in s.data.ood]
            reads += [("eval.protocols", d) for d in protocol_datasets(s)]
            for where, d in reads:
                if d not in self.datasets:
                    raise ValueError(undeclared_dataset_message(f"suites.{name}.{where}", d, self.datasets))
        return self


def undeclared_dataset_message(key: str, dataset: str, declared) -> str:
    """One sentence for a suite that reads ``dataset``, which ``datasets:`` does not declare: the closest declared
    name for a typo, else how to declare it (only a dataset the data registry knows can be declared)."""
    import difflib

    from ..data.sources import DATASETS

    close = difflib.get_close_matches(dataset, list(declared), n=1, cutoff=0.6)
    if dataset in DATASETS:
        fix = f"add `{dataset}: {{}}` under datasets (its download stage)"
    elif close:
        fix = f"did you mean {close[0]!r}?"
    else:
        fix = f"use a dataset declared there ({', '.join(declared)})"
    return f"{key} reads dataset {dataset!r}, which `datasets` does not declare: {fix}"


# ------------------------------------------------------------------------------------------------ resolved configs
class Experiment(_Model):
    """One training run, fully resolved: what the train / evaluate stages of one matrix item see."""

    suite: str
    method: TrainMethod
    arch: str
    seed: int
    group: Literal["main", "ablation"] = "main"
    train: TrainCfg

    #: the ablation value exactly as written in params.yaml (DVC renders it the same way in stage names and paths)
    label: Optional[str] = None

    @property
    def name(self) -> str:
        """``<suite>-<method>-<arch>-s<seed>``, plus ``-lg<label>`` for a point of the lambda_grad ablation."""
        lg = f"-lg{self.label}" if self.label is not None else ""
        return f"{self.suite}-{self.method}-{self.arch}-s{self.seed}{lg}"


class Config:
    """Validated params plus the resolution rules (suite -> method -> experiment)."""

    def __init__(self, params: Params, raw: dict, path: Path):
        self.params = params
        self.raw = raw
        self.path = path

    # ---- lookups
    def suite(self, name: str) -> SuiteCfg:
        if name not in self.params.suites:
            raise ConfigError(f"{self.path}: suite {name!r} is not defined under `suites`; defined: "
                              f"{sorted(self.params.suites)}")
        return self.params.suites[name]

    def train_cfg(self, suite: str, method: str, lambda_grad: Optional[float] = None) -> TrainCfg:
        """suites.<suite>.train  <-  the method's defining settings (registry)  <-  method_params.<method>  (<- the
        ablation's ``lambda_grad``), validated."""
        s = self.suite(suite)
        override = s.method_params.get(method, {})
        merged = registry.resolve_settings(method, s.train.model_dump(exclude_unset=True), override)
        if lambda_grad is not None:
            merged = registry.deep_merge(merged, {"loss": {"lambda_grad": lambda_grad}})
        try:
            return TrainCfg.model_validate(merged)
        except ValidationError as e:
            in_override = all(_has(override, err["loc"]) for err in e.errors())
            prefix = f"suites.{suite}.method_params.{method}" if in_override else \
                f"suites.{suite}.train (as merged with method_params.{method})"
            raise ConfigError(_format_errors(e, prefix, merged, self.path, TrainCfg)) from None

    def train_reads(self, suite: str, method: str, ablation: bool = False) -> list[tuple[str, ...]]:
        """The key paths of ``suites.<suite>.train``, as params.yaml sets them, whose values reach ``method``'s
        settings: neither the method's defining settings (registry) nor ``method_params.<method>`` replace them, and
        for a point of the lambda ablation (``ablation``) they are not its own ``loss.lambda_grad``. What a train
        stage of that method reads from ``train`` (its DVC params: :mod:`greg_ood.run.dvcgen`)."""
        raw = self.raw["suites"][suite]
        override = (raw.get("method_params") or {}).get(method)
        return [p for p in registry.leaf_paths(raw.get("train"))
                if not registry.replaces(p, registry.get(method).settings) and not registry.replaces(p, override)
                and not (ablation and p == ABLATION_KEY)]

    def experiment(self, suite: str, method: str, arch: str, seed: int,
                   ablation_lambda: Optional[float] = None) -> Experiment:
        s = self.suite(suite)
        if arch not in s.archs:
            raise ConfigError(f"{self.path}: suites.{suite}.archs does not list {arch!r} (has {s.archs})")
        if ablation_lambda is None and method not in s.methods:
            raise ConfigError(f"{self.path}: suites.{suite}.methods does not list {method!r} (has {s.methods})")
        if ablation_lambda is None:
            return Experiment(suite=suite, method=method, arch=arch, seed=seed, group="main",
                              train=self.train_cfg(suite, method))
        raw_values = self.raw["suites"][suite].get("ablation", {}).get("lambda_grad", [])
        label = next((str(v) for v in raw_values if float(v) == float(ablation_lambda)), None)
        if label is None:
            raise ConfigError(f"{self.path}: lambda_grad {ablation_lambda} is not listed in "
                              f"suites.{suite}.ablation.lambda_grad {raw_values}")
        return Experiment(suite=suite, method=method, arch=arch, seed=seed, group="ablation", label=label,
                          train=self.train_cfg(suite, method, float(ablation_lambda)))

    def experiments(self, suite: str, include_ablation: bool = True) -> list[Experiment]:
        s = self.suite(suite)
        out = [self.experiment(suite, m, a, sd) for m in s.methods for a in s.archs for sd in s.seeds]
        if include_ablation:
            ab = s.ablation
            arch = ab.arch or s.archs[0]
            for lam in ab.lambda_grad:
                for sd in (ab.seeds if ab.seeds is not None else s.seeds):
                    out.append(self.experiment(suite, ab.method, arch, sd, ablation_lambda=lam))
        return out

    def dataset_options(self, name: str) -> dict[str, Any]:
        return dict(self.params.datasets.get(name, {}))


def load(path: Union[str, Path] = "params.yaml") -> Config:
    """Read and validate params.yaml; raise :class:`ConfigError` naming the key on any problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found. Run the stage from the repository root (where params.yaml lives).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return validate(raw, path)


def validate(raw: dict, path: Union[str, Path] = "params.yaml") -> Config:
    path = Path(path)
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, "", raw, path, Params)) from None
    cfg = Config(params, raw, path)
    # resolve every method of every suite now, so a bad override stops every stage before any compute
    for sname, s in params.suites.items():
        for m in set(s.methods) | set(s.method_params) | {s.ablation.method}:
            cfg.train_cfg(sname, m)
        for lam in s.ablation.lambda_grad:
            cfg.train_cfg(sname, s.ablation.method, lam)
        check_shared_train_keys(cfg, sname)
    return cfg


#: the setting a point of the lambda ablation sets itself (its value is in the stage's command, not params.yaml)
ABLATION_KEY = ("loss", "lambda_grad")


def check_shared_train_keys(cfg: Config, suite: str) -> None:
    """One source per setting: a value of ``suites.<suite>.train`` must reach at least one experiment. Raise
    :class:`ConfigError` naming both keys when every method that would read it (its defining settings leave it open;
    the ablation's method too, except for the ablation's own lambda) overrides it under ``method_params``, since the
    shared value could then never take effect. The shared ``eval`` keys have no per-method override (DOS's own
    detection score replaces ``eval.primary`` for DOS alone; the pretrained baseline always reads it)."""
    s = cfg.suite(suite)
    raw = cfg.raw["suites"][suite]
    overrides = raw.get("method_params") or {}
    for path in registry.leaf_paths(raw.get("train")):
        methods = [*s.methods, *([s.ablation.method] if s.ablation.lambda_grad and path != ABLATION_KEY else [])]
        readers = [m for m in dict.fromkeys(methods) if not registry.replaces(path, registry.get(m).settings)]
        over = [m for m in readers if registry.replaces(path, overrides.get(m))]
        if readers and over == readers:
            key = ".".join(path)
            also = f" (and the same key of {', '.join(over[1:])})" if len(over) > 1 else ""
            raise ConfigError(
                f"{cfg.path}: suites.{suite}.train.{key} never takes effect, because "
                f"suites.{suite}.method_params.{over[0]}.{key}{also} overrides it for every method that reads it "
                f"({', '.join(readers)}): delete the per-method value{'s' if len(over) > 1 else ''} so that the "
                f"shared one applies")
