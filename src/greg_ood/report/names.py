"""Display names and orders of everything the report shows: methods, architectures, OOD sets, scores, metrics.

The one place where a method, an architecture or an OOD set gets its printed name and its position in tables and
figures. Unknown keys are still shown (after the known ones, under their own key), so a new method appears in the
report before anyone names it here.
"""
from __future__ import annotations

from .. import archs, registry
from ..run.runinfo import PRETRAINED

#: training methods in table order, their names, colours and "+ grad" pairs come from the method registry (the one
#: place a method is declared); the constants below are the built-in table, the functions read the live registry
METHOD_ORDER = registry.ORDER
METHOD_NAMES = {m: registry.display_name(m) for m in registry.ORDER}
PRETRAINED_COLOR = "0.45"
#: rows that are not fine-tuning methods and come first in the main tables (a results file whose ``method`` is
#: ``pretrained`` — the pretrained model scored without fine-tuning, stage evaluate_<S>_pretrained — is the baseline row)
BASELINE_ORDER = (PRETRAINED,)
BASELINE_NAMES = {PRETRAINED: "Pretrained (no fine-tuning)"}
BENCHMARK_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet10": "ImageNet-10"}
ARCH_ORDER = archs.NAMES
ARCH_NAMES = {name: a.display for name, a in archs.ARCHS.items()}
#: OOD sets: one style (the dataset's usual name, capitalised as its authors write it)
SET_NAMES = {"fmnist_near": "Fashion-MNIST 6–9", "digits": "Digits", "faces": "Faces",
             "gaussian_noise": "Gaussian noise", "uniform_noise": "Uniform noise",
             "textures": "Textures", "dtd": "Textures", "svhn": "SVHN", "places365": "Places365",
             "places": "Places", "lsun_crop": "LSUN-C", "lsun_resize": "LSUN-R", "isun": "iSUN",
             "sun": "SUN", "inaturalist": "iNaturalist", "id": "ID test", "id_train": "ID training batches",
             "mean": "Mean"}
SCORE_NAMES = {"energy": "energy (−E)", "msp": "MSP", "max_logit": "max logit", "odin": "ODIN",
               "mahalanobis": "Mahalanobis", "absent_class": "absent-class",
               "primary": "method's own (energy −E; DOS: absent-class 1 − p_K+1)"}
METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out")
METRIC_NAMES = {"fpr95": "FPR95 ↓", "auroc": "AUROC ↑", "aupr_in": "AUPR-In ↑", "aupr_out": "AUPR-Out ↑",
                "id_accuracy": "ID acc. ↑"}
LOWER_IS_BETTER = {"fpr95"}
#: (without, with the gradient term): the method a gradient-regularised one reduces to at λ_∇S = 0
GRAD_PAIRS = tuple(registry.penalty_pairs())
MEAN = "mean"  # reserved ood_set name of the unweighted mean over OOD sets
#: derived ood_set name of the unweighted mean over the natural-image OOD sets (``kind: natural`` in params.yaml): the
#: paper's kind of mean; shown beside MEAN (then labelled "Mean, all sets") when a suite also has synthetic-noise sets
NATURAL_MEAN = "mean_natural"
SPLIT_MEAN_NAMES = {NATURAL_MEAN: "Mean, natural-image sets", MEAN: "Mean, all sets"}


def method_key(m: str) -> tuple:
    """Sort key: baseline rows, then the paper's method order, then unknown methods by name."""
    if m in BASELINE_ORDER:
        return (0, BASELINE_ORDER.index(m), m)
    order = registry.trained()
    if m in order:
        return (1, order.index(m), m)
    return (2, 0, m)


def arch_key(a: str) -> tuple:
    return (ARCH_ORDER.index(a), a) if a in ARCH_ORDER else (len(ARCH_ORDER), a)


def method_name(m: str) -> str:
    return BASELINE_NAMES.get(m) or registry.display_name(m)


def method_color(m: str) -> str:
    """The method's colour in every figure (the registry's; the pretrained baseline grey)."""
    if m in BASELINE_ORDER:
        return PRETRAINED_COLOR
    entry = registry.REGISTRY.get(m)
    return entry.color if entry is not None else "0.3"


def has_grad_term(m: str) -> bool:
    """Whether the method trains with the gradient penalty (drawn dashed)."""
    entry = registry.REGISTRY.get(m)
    return entry is not None and entry.has_penalty


def arch_name(a: str) -> str:
    return ARCH_NAMES.get(a, a)


def set_name(s: str) -> str:
    """Display name of an OOD set; an unknown key is shown with spaces for underscores, first letter capitalised."""
    if s in SET_NAMES:
        return SET_NAMES[s]
    t = s.replace("_", " ")
    return t[:1].upper() + t[1:]


def score_name(s: str) -> str:
    return SCORE_NAMES.get(s, s)

