"""What one stage execution *is*, in the words every tool shows: its real DVC stage name (``dvc.yaml``'s matrix item,
e.g. ``train_mini@greg-small_cnn-0``), its MLflow run name (what differs first: ``greg · s0 · train (mini,
small_cnn)``), the identity params/tags MLflow groups and colours runs by (suite, method, arch, seed, lambda_grad,
group), a one-sentence description, and the MLflow metric names (grouped by ``/`` sections; the CSV columns keep
their short names, this module maps them). No MLflow import here: :mod:`greg_ood.run.tracking` writes what this says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

#: stages whose DVC name carries no matrix item
_PER_SUITE = ("certify", "report")
#: the method name of the pretrained model scored without fine-tuning (evaluate_<S>_pretrained@<arch>): the tables'
#: baseline row
PRETRAINED = "pretrained"


#: folder of the stage groups that have a dvc.yaml (and dvc.lock) of their own
PIPELINES_DIR = "pipelines"


def dvc_file(name: str) -> str:
    """The dvc.yaml that declares the stage ``name`` (``train_mini@greg-small_cnn-0``), or the stage group ``name`` (a
    name before ``@``) of a group declared in one file, relative to the repository root.

    The groups that grow with methods x archs x seeds (``train_<S>``, ``evaluate_<S>``, ``train_<S>_ablation``,
    ``evaluate_<S>_ablation``) have their own files: DVC parses and rewrites the whole dvc.lock of a stage's dvc.yaml
    after every stage it runs, so a lock per big group keeps that rewrite a fraction of one lock for all. ``train_<S>``
    has one file per method, ``pipelines/train_<S>-<method>/dvc.yaml`` (its item starts with the method), since each
    method lists the shared training keys it reads (a DVC matrix shares one params list); the others have
    ``pipelines/<group>/dvc.yaml``. Everything else (downloads, pretrain, select, the pretrained baseline, certify,
    report) stays in the root ``dvc.yaml``, so ``dvc repro report_<S>`` keeps its short name."""
    group, _, item = name.partition("@")
    kind, _, rest = group.partition("_")
    if kind not in ("train", "evaluate") or not rest or rest.endswith("_" + PRETRAINED):
        return "dvc.yaml"
    if kind == "train" and not rest.endswith("_ablation"):
        if not item:
            raise ValueError(f"{group}: one dvc.yaml per method; name a stage (<group>@<method>-<arch>-<seed>)")
        return f"{PIPELINES_DIR}/{group}-{item.split('-')[0]}/dvc.yaml"
    return f"{PIPELINES_DIR}/{group}/dvc.yaml"


def pretrained_experiment(suite: str, arch: str) -> str:
    """The experiment name (file stem) of the pretrained model's evaluation: ``<suite>-pretrained-<arch>``."""
    return f"{suite}-{PRETRAINED}-{arch}"


@dataclass(frozen=True)
class RunInfo:
    """One stage execution: ``stage`` (download, pretrain, select, train, evaluate, certify, report) and the fields
    that apply to it (``None`` where not)."""

    stage: str
    suite: Optional[str] = None
    method: Optional[str] = None
    arch: Optional[str] = None
    seed: Optional[int] = None
    lambda_grad: Optional[float] = None
    group: Optional[str] = None
    label: Optional[str] = None  # the ablation point as params.yaml writes it (DVC uses it in the stage name)
    dataset: Optional[str] = None

    @classmethod
    def of_experiment(cls, stage: str, exp) -> "RunInfo":
        """The train or evaluate execution of a resolved :class:`greg_ood.run.config.Experiment`."""
        return cls(stage, suite=exp.suite, method=exp.method, arch=exp.arch, seed=exp.seed,
                   lambda_grad=exp.train.loss.lambda_grad, group=exp.group, label=exp.label)

    @property
    def dvc_stage(self) -> str:
        """The stage's name as ``dvc.yaml`` (and ``dvc repro``/``dvc status``) spells it."""
        if self.stage == "download":
            return f"download@{self.dataset}"
        base = f"{self.stage}_{self.suite}"
        if self.stage in _PER_SUITE:
            return base
        if self.stage in ("pretrain", "select"):
            return f"{base}@{self.arch}"
        if self.method == PRETRAINED:
            return f"{base}_{PRETRAINED}@{self.arch}"
        if self.group == "ablation":
            return f"{base}_ablation@{self.label}-{self.seed}"
        return f"{base}@{self.method}-{self.arch}-{self.seed}"

    @property
    def dvc_target(self) -> str:
        """The stage as ``dvc repro`` addresses it: its name for a stage of the root dvc.yaml, else
        ``<file>:<name>`` (:func:`dvc_file`)."""
        name = self.dvc_stage
        where = dvc_file(name)
        return name if where == "dvc.yaml" else f"{where}:{name}"

    @property
    def run_name(self) -> str:
        """What differs between runs first (method and λ, seed), then the stage and its context."""
        lead = []
        if self.stage == "download":
            return f"download · {self.dataset}"
        if self.stage == "pretrain":  # the cross-entropy model every method fine-tunes, not a method's run
            return f"pretrain · cross-entropy · s{self.seed} ({self.suite}, {self.arch})"
        if self.method is not None:
            lead.append(self.method + (f" λ={self.label}" if self.group == "ablation" else ""))
        if self.seed is not None:
            lead.append(f"s{self.seed}")
        context = ", ".join(x for x in (self.suite, self.arch) if x)
        return " · ".join([*lead, f"{self.stage} ({context})"])

    def identity(self) -> dict[str, Any]:
        """The params (and tags) that say which run this is; only the fields that apply."""
        keys = ("suite", "method", "arch", "seed", "lambda_grad", "group", "dataset")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    @property
    def description(self) -> str:
        """A sentence for the run's description (MLflow's ``mlflow.note.content``)."""
        what = {
            "download": f"Fetches (or finds), verifies and prepares the dataset {self.dataset}.",
            "pretrain": f"Cross-entropy pretraining of {self.arch} on the {self.suite} ID set (the model the methods "
                        "fine-tune).",
            "select": f"Energy-based auxiliary subset selection with the pretrained {self.arch} ({self.suite}).",
            "train": f"Trains {self.method} on {self.arch}, suite {self.suite}, seed {self.seed}, "
                     f"lambda_grad {self.lambda_grad}" + (" (a point of the lambda_grad ablation)."
                                                          if self.group == "ablation" else "."),
            "evaluate": f"Evaluates the pretrained {self.arch} without fine-tuning (the tables' baseline row) on "
                        f"{self.suite}: ID accuracy and OOD detection on every set." if self.method == PRETRAINED else
                        f"Evaluates {self.method} ({self.arch}, seed {self.seed}, lambda_grad {self.lambda_grad}) on "
                        f"{self.suite}: ID accuracy and OOD detection on every set.",
            "certify": f"Input-gradient norms and first-order certified radii, ID vs OOD ({self.suite}).",
            "report": f"Tables, claims and figures of the suite {self.suite}.",
        }.get(self.stage, f"{self.stage} ({self.suite}).")
        return f"{what} DVC stage `{self.dvc_stage}`."


#: training-curve columns (CSV names, kept short) -> MLflow metric names
_TRAIN_METRICS = {
    "ce": "loss/ce", "energy": "loss/energy_margin", "oe": "loss/oe", "abs": "loss/abs",
    "grad": "loss/grad_penalty", "total": "loss/total",
    "lr": "train/lr", "epoch": "train/epoch", "train_seconds": "train/seconds", "train_steps": "train/steps",
    "id_test_acc": "eval/id_test_acc",
}
_DIAG_PREFIXES = ("active_frac", "gradnorm_", "monitor_gradnorm_", "energy_id_", "energy_aux_")


def train_metric(key: str) -> str:
    """The MLflow name of a training-curve column: ``loss/…``, ``train/…``, ``diag/…`` (per-step diagnostics)."""
    if key in _TRAIN_METRICS:
        return _TRAIN_METRICS[key]
    if key.startswith(_DIAG_PREFIXES):
        return f"diag/{key}"
    return f"train/{key}"


def train_metrics(row: dict) -> dict:
    return {train_metric(k): v for k, v in row.items()}


def eval_metrics(results: dict, headline: str, primary: str) -> dict[str, float]:
    """An evaluation's MLflow metrics: ``eval/id_acc``, ``eval/mean/<m>`` (over OOD sets, primary score),
    ``eval/headline/<m>`` (the suite's headline set, primary score) and ``eval/<score>/<set>/<m>``."""
    out = {"eval/id_acc": results["id_accuracy"]}
    out.update({f"eval/mean/{k}": results[k] for k in ("fpr95", "auroc", "aupr_in", "aupr_out") if k in results})
    out.update({f"eval/headline/{k}": v for k, v in results["scores"][primary]["per_set"][headline].items()})
    for sc, d in results["scores"].items():
        for st, m in d["per_set"].items():
            out.update({f"eval/{sc}/{st}/{k}": v for k, v in m.items()})
    return out


def summary_metrics(results: dict, headline: str, primary: str) -> dict[str, float]:
    """The few numbers a reader looks for first, in % rounded to 2 decimals (MLflow's ``summary/`` group):
    ``summary/fpr95`` and ``summary/auroc`` on the suite's headline set with the primary score, their mean over
    every OOD set (``summary/mean_fpr95``, ``summary/mean_auroc``) and ``summary/id_acc``."""
    head = results["scores"][primary]["per_set"][headline]
    raw = {"fpr95": head["fpr95"], "auroc": head["auroc"], "mean_fpr95": results["fpr95"],
           "mean_auroc": results["auroc"], "id_acc": results["id_accuracy"]}
    return {f"summary/{k}": round(100 * v, 2) for k, v in raw.items()}
