"""Display names and orders of everything the report shows: methods, architectures, OOD sets, scores, metrics.

The one place where a method, an architecture or an OOD set gets its printed name and its position in tables and
figures. Unknown keys are still shown (after the known ones, under their own key), so a new method appears in the
report before anyone names it here.
"""
from __future__ import annotations

#: training methods in the order of the paper's tables
METHOD_ORDER = ("energy", "oe", "oe_grad", "dos", "greg", "greg_plus")
METHOD_NAMES = {"energy": "Energy", "oe": "OE", "oe_grad": "OE + grad", "dos": "DOS", "greg": "GReg",
                "greg_plus": "GReg+"}
#: one colour per method in every figure; methods with the gradient term are drawn dashed
METHOD_COLORS = {"pretrained": "0.45", "energy": "tab:blue", "oe": "tab:green", "oe_grad": "tab:olive",
                 "dos": "tab:purple", "greg": "tab:red", "greg_plus": "tab:orange"}
GRAD_TERM_METHODS = ("oe_grad", "greg", "greg_plus")
#: rows that are not fine-tuning methods and come first in the main tables (a results file whose ``method`` is
#: ``pretrained`` — the pretrained model scored without fine-tuning — is shown as the baseline row)
BASELINE_ORDER = ("pretrained",)
BASELINE_NAMES = {"pretrained": "Pretrained (no fine-tuning)"}
BENCHMARK_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet10": "ImageNet-10"}
ARCH_ORDER = ("small_cnn", "resnet18", "wrn40_2", "densenet100", "densenet101", "densenet121")
ARCH_NAMES = {"small_cnn": "Small CNN", "resnet18": "ResNet-18", "wrn40_2": "WRN-40-2",
              "densenet100": "DenseNet-100", "densenet101": "DenseNet-101", "densenet121": "DenseNet-121"}
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
GRAD_PAIRS = (("oe", "oe_grad"), ("energy", "greg"))
MEAN = "mean"  # reserved ood_set name of the unweighted mean over OOD sets


def method_key(m: str) -> tuple:
    """Sort key: baseline rows, then the paper's method order, then unknown methods by name."""
    if m in BASELINE_ORDER:
        return (0, BASELINE_ORDER.index(m), m)
    if m in METHOD_ORDER:
        return (1, METHOD_ORDER.index(m), m)
    return (2, 0, m)


def arch_key(a: str) -> tuple:
    return (ARCH_ORDER.index(a), a) if a in ARCH_ORDER else (len(ARCH_ORDER), a)


def method_name(m: str) -> str:
    return METHOD_NAMES.get(m) or BASELINE_NAMES.get(m, m)


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

