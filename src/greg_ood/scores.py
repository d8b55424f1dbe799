"""Energy and OOD detection scores.

Two conventions, stated once:

* :func:`energy` returns the **energy** ``E(x) = -T * logsumexp(f(x) / T)``: *low* = in-distribution. It is the
  quantity the losses, the gradient penalty and the sampler use (docs/method.md §1).
* Every **detection score** below returns "*higher = more in-distribution*" (ID is the positive class of the
  metrics). The energy detector therefore scores ``-E`` (:func:`energy_score`).

Which inputs each detection score needs (``SCORES`` holds this as data, for loops in the evaluate stage):

| name | needs | formula (source) |
|---|---|---|
| ``energy`` | logits | ``-E = T * logsumexp(f / T)``, T = 1 (Liu et al. 2020; GReg ``detect.py``) |
| ``msp`` | logits | ``max_k softmax(f)_k`` (Hendrycks & Gimpel 2017; OE) |
| ``max_logit`` | logits | ``max_k f_k`` (Hendrycks et al. 2022) |
| ``odin`` | model + normalised input (gradient) | ``max_k softmax(f(x~) / T)``, ``x~ = x - eps * sign(grad_x CE(f(x)/T, argmax f(x))) / std_c`` (Liang et al. 2018) |
| ``mahalanobis`` | penultimate features + a fit on ID *training* features | ``max_c -1/2 (h - mu_c)^T Sigma^+ (h - mu_c)`` (Lee et al. 2018, no input perturbation, no layer ensemble) |
| ``absent_class`` | logits of a K+1-output model | ``1 - softmax(f)_K`` (DOS, Jiang et al. 2024) |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["energy", "energy_score", "msp", "max_logit", "logit_score", "odin", "absent_class_score", "Mahalanobis",
           "mahalanobis_fit", "mahalanobis_score", "ScoreInfo", "SCORES", "LOGIT_SCORES"]


def _logits_2d(logits: torch.Tensor, name: str = "logits", min_cols: int = 1) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        logits = torch.as_tensor(logits)
    if logits.dim() != 2 or logits.shape[1] < min_cols:
        raise ValueError(f"{name}: expected a [N, C] tensor with C >= {min_cols}, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {logits.dtype}")
    return logits


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Energy ``E(x) = -T * logsumexp(f(x) / T)`` over **all** outputs, shape ``[N]``; low = in-distribution.

    Source: Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020 (Eq. 1 with the free energy of the
    softmax); the GReg paper's S_En (docs/method.md §1). T = 1 everywhere in the paper and official code.
    """
    logits = _logits_2d(logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return -torch.logsumexp(logits, dim=1)
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Detection score ``-E(x) = T * logsumexp(f / T)``: higher = more in-distribution (GReg ``detect.py``)."""
    return -energy(logits, temperature)


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability ``max_k softmax(f)_k`` (Hendrycks & Gimpel, ICLR 2017); higher = ID."""
    return torch.softmax(_logits_2d(logits), dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit ``max_k f_k`` (Hendrycks et al., ICML 2022, "MaxLogit"); higher = ID."""
    return _logits_2d(logits).amax(dim=1)


def absent_class_score(logits: torch.Tensor) -> torch.Tensor:
    """DOS score ``1 - softmax(f)_K`` of a K+1-output model (the last output is the absent class); higher = ID.

    Source: Jiang et al., "Diverse Outlier Sampling", ICLR 2024 (``lygjwy/DOS``); GReg ``detect.py`` ``abs``.
    """
    logits = _logits_2d(logits, min_cols=2)
    return 1.0 - torch.softmax(logits, dim=1)[:, -1]


LOGIT_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "energy": energy_score, "msp": msp, "max_logit": max_logit, "absent_class": absent_class_score}


def logit_score(name: str, logits: torch.Tensor) -> torch.Tensor:
    """Detection score ``name`` (one of ``LOGIT_SCORES``) computed from logits alone; higher = ID.

    The caller chooses the columns: the project scores ``energy`` on all outputs and ``msp``/``max_logit`` on the
    first K (a K+1-output DOS model's absent class is not an ID class).
    """
    if name not in LOGIT_SCORES:
        raise ValueError(f"name: {name!r} is not a logit-only score; choose one of {list(LOGIT_SCORES)}")
    return LOGIT_SCORES[name](logits)


def channel_view(channel_std, x: torch.Tensor, name: str = "channel_std") -> Optional[torch.Tensor]:
    """Per-channel std of the input normalisation shaped to broadcast against ``x`` [N, C, ...] (``None`` stays
    ``None``). With x_norm = (x_pix - mean) / std, dividing by it turns a gradient w.r.t. the normalised input into
    one w.r.t. the [0, 1] pixel input, and a step in pixel units into normalised units (docs/method.md §2.5, §6)."""
    if channel_std is None:
        return None
    s = torch.as_tensor(channel_std, dtype=x.dtype, device=x.device).flatten()
    if s.numel() not in (1, x.shape[1]):
        raise ValueError(f"{name}: needs 1 or {x.shape[1]} values (one per input channel), got {s.numel()}")
    if not bool(torch.all(s > 0)):
        raise ValueError(f"{name}: every standard deviation must be > 0")
    return s.view(1, -1, *([1] * (x.dim() - 2))) if s.numel() > 1 else s.view(*([1] * x.dim()))


def odin(model: torch.nn.Module, x: torch.Tensor, temperature: float = 1000.0, epsilon: float = 0.0014,
         channel_std: Optional[Union[Sequence[float], torch.Tensor]] = None,
         num_classes: Optional[int] = None, clean: Optional[list] = None) -> torch.Tensor:
    """ODIN score (Liang et al., ICLR 2018), higher = ID; needs the model and gradient w.r.t. the input.

    ``x`` is the **normalised** input batch. With ``f`` the first K logits (``num_classes``, default
    ``model.num_classes`` when the model has it, else all):

        y^   = argmax_k f_k(x)
        g    = grad_x CE(f(x) / T, y^)
        x~   = x - eps * s(g) / std_c        s(g) = +1 where g >= 0, else -1 (as in ODIN's code)
        score = max_k softmax(f(x~) / T)_k

    Dividing by the ID per-channel ``channel_std`` applies the perturbation ``eps`` in [0, 1] pixel units although x is
    normalised (GReg ``detect.py`` / ODIN code). ``channel_std=None`` perturbs the normalised input by ``eps`` directly.
    Defaults T = 1000, eps = 0.0014 (GReg ``detect.py``). The model's train/eval mode is left as it is (call it in
    eval mode); parameter ``.grad`` fields are not touched. Works inside ``torch.no_grad`` / ``inference_mode``.

    ``clean`` (optional list, for a model with ``features``/``head``): the unperturbed pass runs as
    ``head(features(x))`` and its ``(features, logits)``, detached, are appended — the same values as a forward pass
    without gradients (eval mode: the layers compute the same arithmetic), so a caller that needs them too skips a
    second forward pass.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x: expected a non-empty batch [N, C, ...], got shape {tuple(x.shape)}")
    K = num_classes if num_classes is not None else getattr(model, "num_classes", None)
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        std = channel_view(channel_std, xg)
        if clean is None:
            logits = model(xg)
        else:
            z = model.features(xg)
            logits = model.head(z)
            clean.append((z.detach(), logits.detach()))
        logits = logits[:, :K] if K is not None else logits
        pred = logits.argmax(dim=1)
        loss = F.cross_entropy(logits / temperature, pred, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
        step = torch.where(g >= 0, 1.0, -1.0).to(xg.dtype)
        if std is not None:
            step = step / std
        x_t = (xg - epsilon * step).detach()
    with torch.no_grad():
        logits_t = model(x_t)
        logits_t = logits_t[:, :K] if K is not None else logits_t
        return torch.softmax(logits_t / temperature, dim=1).amax(dim=1)


# ----------------------------------------------------------------------------------------------------- Mahalanobis
def _features_2d(features, name: str) -> torch.Tensor:
    f = torch.as_tensor(features)
    if f.dim() != 2 or f.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, D] feature matrix, got shape {tuple(f.shape)}")
    if not f.is_floating_point():
        f = f.float()
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return f


def mahalanobis_fit(features, labels, num_classes: Optional[int] = None, rcond: float = 1e-10) -> dict:
    """Fit class means and one shared covariance on ID *training* penultimate features (Lee et al., NeurIPS 2018).

        mu_c  = mean of h over class c
        Sigma = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T      (sklearn ``EmpiricalCovariance`` on the centred features)
        P     = pseudo-inverse of Sigma (symmetric eigendecomposition; eigenvalues below rcond * max are dropped)

    Computed in float64. Returns ``{"means": [C, D], "whitener": [D, r]}`` with ``P = W W^T`` so that
    ``(h - mu)^T P (h - mu) = ||(h - mu) W||^2`` (numerically stable, never inverts Sigma directly).
    Classes without samples are dropped (their mean is undefined).
    """
    f = _features_2d(features, "features").double()
    y = torch.as_tensor(labels).long().flatten()
    if y.numel() != f.shape[0]:
        raise ValueError(f"labels: {y.numel()} labels for {f.shape[0]} feature rows")
    if bool((y < 0).any()):
        raise ValueError("labels: negative labels (unlabelled data) cannot fit class means")
    C = int(num_classes) if num_classes is not None else int(y.max()) + 1
    counts = torch.bincount(y, minlength=C).to(f.dtype)
    sums = torch.zeros(C, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, y, f)
    present = counts > 0
    means = sums / counts.clamp_min(1).unsqueeze(1)
    centred = f - means[y]
    cov = centred.T @ centred / f.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > rcond * evals.max().clamp_min(torch.finfo(f.dtype).tiny)
    whitener = evecs[:, keep] / evals[keep].sqrt()
    return {"means": means[present], "whitener": whitener}


def mahalanobis_score(features, fitted: dict) -> torch.Tensor:
    """``max_c -1/2 (h - mu_c)^T Sigma^+ (h - mu_c)`` for each row of ``features``; higher = ID (float32 result)."""
    f = _features_2d(features, "features")
    W = fitted["whitener"].to(f.device)
    z = f.double() @ W
    m = fitted["means"].to(f.device) @ W
    d2 = (z.pow(2).sum(1, keepdim=True) - 2 * z @ m.T + m.pow(2).sum(1)).clamp_min(0)
    return (-0.5 * d2.amin(dim=1)).float()


class Mahalanobis:
    """Fit/score wrapper: ``Mahalanobis().fit(train_features, train_labels).score(features)`` (see the functions)."""

    def __init__(self, rcond: float = 1e-10):
        self.rcond = rcond
        self.fitted: Optional[dict] = None

    def fit(self, features, labels, num_classes: Optional[int] = None) -> "Mahalanobis":
        self.fitted = mahalanobis_fit(features, labels, num_classes=num_classes, rcond=self.rcond)
        return self

    def score(self, features) -> torch.Tensor:
        if self.fitted is None:
            raise ValueError("Mahalanobis: call fit() on ID training features before score()")
        return mahalanobis_score(features, self.fitted)


# --------------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ScoreInfo:
    """What a detection score needs. ``kind``: ``logits`` (a function of the logits), ``model`` (needs the model and
    the input, with gradients: ODIN), ``fit`` (needs penultimate features and a fit on ID training data)."""

    name: str
    kind: str
    fn: Callable
    needs_extra_output: bool = False
    description: str = ""


SCORES: dict[str, ScoreInfo] = {
    "energy": ScoreInfo("energy", "logits", energy_score, description="-E = logsumexp(f) over all outputs"),
    "msp": ScoreInfo("msp", "logits", msp, description="max softmax over the K ID classes"),
    "max_logit": ScoreInfo("max_logit", "logits", max_logit, description="max logit over the K ID classes"),
    "odin": ScoreInfo("odin", "model", odin, description="ODIN, T=1000, eps=0.0014 / std_c; needs input gradients"),
    "mahalanobis": ScoreInfo("mahalanobis", "fit", mahalanobis_score,
                             description="class means + shared covariance fitted on ID training features"),
    "absent_class": ScoreInfo("absent_class", "logits", absent_class_score, needs_extra_output=True,
                              description="1 - softmax(f)_K of a K+1-output (DOS) model"),
}


def eval_no_grad(model: torch.nn.Module, fn):
    """``fn(model)`` with the model in **eval** mode under ``torch.inference_mode`` (its mode restored afterwards).
    The tensor(s) it returns are cloned outside inference mode, so they can enter autograd-recorded ops (the
    selection of GReg+ / DOS / POEM scores candidates this way without touching BatchNorm statistics)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = fn(model)
    finally:
        model.train(was_training)
    return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()
