"""One training step per method, built from :mod:`greg_ood.losses`, plus the GReg+/DOS auxiliary selection.

| method | outputs | aux data | clustering | loss (λ from :class:`MethodParams`) |
|---|---|---|---|---|
| ``ce`` | K | no | no | CE (pretraining; ``x_aux`` ignored) |
| ``energy`` | K | random | no | CE + λ_S L_S (Liu et al. 2020) |
| ``oe`` | K | random | no | CE + λ_OE L_OE (Hendrycks et al. 2019) |
| ``oe_grad`` | K | random | no | CE + λ_OE L_OE + λ_∇S L_∇S — **project construction** for the paper's "OE + Grad" ablation (the paper does not say how it combined them; here: the energy-score penalty of GReg, same margins, added to OE) |
| ``dos`` | K+1 | clustered | yes (absent-class score, one-way) | CE_{K+1}(ID) + λ_abs CE(aux -> class K) (Jiang et al. 2024) |
| ``greg`` | K | random | no | CE + λ_S L_S + λ_∇S L_∇S (GReg) |
| ``greg_plus`` | K | clustered | yes (energy, two-way) | same loss as ``greg``; the difference is the selection (:func:`select_auxiliary`) done by the caller |

Every method with auxiliary data runs **one** forward over ``cat(x_id, x_aux)`` (shared BatchNorm statistics, as
energy_ood and OE do); the penalty uses the input gradient of that same forward (method.md §2.5) and is not computed
at all when ``lambda_grad == 0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from . import losses as L
from .sampling import ROLE_HIGH, ROLE_LOW, energy_cluster_select
from .scores import energy as energy_of

__all__ = ["MethodParams", "training_step", "select_auxiliary", "METHODS", "AUX_METHODS", "CLUSTER_METHODS",
           "EXTRA_OUTPUT_METHODS", "PENALTY_METHODS", "method_info"]

METHODS = ("ce", "energy", "oe", "oe_grad", "dos", "greg", "greg_plus")
#: methods whose loss uses auxiliary outliers
AUX_METHODS = ("energy", "oe", "oe_grad", "dos", "greg", "greg_plus")
#: methods whose auxiliary batch is chosen by clustering a candidate batch (select_auxiliary)
CLUSTER_METHODS = ("dos", "greg_plus")
#: methods whose model has K + 1 outputs (the absent class)
EXTRA_OUTPUT_METHODS = ("dos",)
#: methods with the GReg gradient penalty (when lambda_grad > 0)
PENALTY_METHODS = ("oe_grad", "greg", "greg_plus")
#: methods with the energy margin loss L_S
ENERGY_METHODS = ("energy", "greg", "greg_plus")


def method_info(name: str) -> dict:
    """What ``name`` needs: ``{"aux": bool, "clustering": bool, "extra_outputs": int, "penalty": bool}``."""
    if name not in METHODS:
        raise ValueError(f"name: unknown method {name!r}; choose one of {METHODS}")
    return {"aux": name in AUX_METHODS, "clustering": name in CLUSTER_METHODS,
            "extra_outputs": 1 if name in EXTRA_OUTPUT_METHODS else 0, "penalty": name in PENALTY_METHODS}


@dataclass
class MethodParams:
    """Loss hyper-parameters (defaults: the paper / official code, method.md §2, §5).

    ``lambda_energy`` λ_S (0.1), ``lambda_grad`` λ_∇S (1, official reduction), margins ``m_in`` = -25, ``m_out`` = -7,
    ``reduction`` official | per_sample (λ_ps = λ_off / N), ``routing`` joint (every aux row feeds both L_S and the
    penalty, official) | split (two-way roles: low picks -> L_S, high picks -> penalty, top-ups -> both),
    ``grad_space`` normalized | pixel (needs ``channel_std``), ``lambda_oe`` (0.5), ``lambda_abs`` β (1),
    ``temperature`` of the energy (1).
    """

    name: str
    lambda_energy: float = 0.1
    lambda_grad: float = 1.0
    m_in: float = -25.0
    m_out: float = -7.0
    reduction: str = "official"
    routing: str = "joint"
    grad_space: str = "normalized"
    channel_std: Optional[Union[Sequence[float], torch.Tensor]] = None
    lambda_oe: float = 0.5
    lambda_abs: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"name: unknown method {self.name!r}; choose one of {METHODS}")
        if self.routing not in ("joint", "split"):
            raise ValueError(f"routing: must be 'joint' or 'split', got {self.routing!r}")
        if self.reduction not in L.REDUCTIONS:
            raise ValueError(f"reduction: must be one of {L.REDUCTIONS}, got {self.reduction!r}")
        if self.grad_space not in L.GRAD_SPACES:
            raise ValueError(f"grad_space: must be one of {L.GRAD_SPACES}, got {self.grad_space!r}")
        if self.grad_space == "pixel" and self.channel_std is None:
            raise ValueError("channel_std: grad_space='pixel' needs the per-channel std of the input normalisation")
        for k in ("lambda_energy", "lambda_grad", "lambda_oe", "lambda_abs"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{k}: must be a number >= 0, got {v!r}")
        if not self.m_in < self.m_out:
            raise ValueError(f"m_in: must be < m_out, got m_in={self.m_in}, m_out={self.m_out}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")

    @property
    def uses_penalty(self) -> bool:
        return self.name in PENALTY_METHODS and self.lambda_grad > 0


def training_step(model: torch.nn.Module, x_id: torch.Tensor, y_id: torch.Tensor, x_aux: Optional[torch.Tensor],
                  params: MethodParams, aux_roles: Optional[torch.Tensor] = None):
    """Loss of one training step of ``params.name`` (the caller runs ``backward`` and the optimiser step).

    Inputs are normalised batches on the model's device; the model should be in train mode. Returns ``(loss, logs)``
    with detached 0-dim tensors in ``logs`` (no host synchronisation): ``ce``, ``total`` and, where the method has
    them, ``energy`` (L_S, unweighted), ``oe`` / ``abs`` (unweighted), ``grad`` (penalty, unweighted),
    ``active_frac``, ``gradnorm_id``, ``gradnorm_aux`` (see :class:`greg_ood.losses.PenaltyStats`; NaN when no row of
    the group is active).

    ``aux_roles`` (from :func:`select_auxiliary` with ``return_roles=True``) is used only with ``routing="split"``:
    roles 1 feed L_S only, roles 2 the penalty only, roles 0 both. Without roles (or with ``routing="joint"``, the
    official behaviour) every auxiliary row feeds both terms.
    """
    p = params
    if x_id.dim() < 2 or x_id.shape[0] == 0:
        raise ValueError(f"x_id: expected a non-empty batch, got shape {tuple(x_id.shape)}")
    if y_id.dim() != 1 or y_id.shape[0] != x_id.shape[0]:
        raise ValueError(f"y_id: expected [{x_id.shape[0]}] labels, got shape {tuple(y_id.shape)}")
    if p.name == "ce":
        logits = model(x_id)
        ce = L.cross_entropy(logits, y_id)
        return ce, {"ce": ce.detach(), "total": ce.detach()}
    if x_aux is None or x_aux.shape[0] == 0:
        raise ValueError(f"x_aux: method {p.name!r} needs a non-empty auxiliary batch")
    if x_aux.shape[1:] != x_id.shape[1:]:
        raise ValueError(f"x_aux: image shape {tuple(x_aux.shape[1:])} differs from x_id's {tuple(x_id.shape[1:])}")
    n_in, n_aux = x_id.shape[0], x_aux.shape[0]
    split = p.routing == "split" and aux_roles is not None
    if split and (aux_roles.dim() != 1 or aux_roles.shape[0] != n_aux):
        raise ValueError(f"aux_roles: expected [{n_aux}] roles, got shape {tuple(aux_roles.shape)}")

    x = torch.cat([x_id, x_aux], dim=0)
    penalty_on = p.uses_penalty
    if penalty_on:
        x = x.detach().requires_grad_(True)
    logits = model(x)
    K = getattr(model, "num_classes", None)
    if K is None:
        K = logits.shape[1] - (1 if p.name == "dos" else 0)
    if p.name == "dos" and (logits.shape[1] < 2 or logits.shape[1] == K):
        raise ValueError(f"model: method 'dos' needs K+1 outputs (build it with extra_outputs=1); got "
                         f"{logits.shape[1]} outputs for num_classes={K}")
    ce = L.cross_entropy(logits[:n_in], y_id)  # all outputs: K-way, or K+1-way for DOS
    loss = ce
    logs: dict[str, torch.Tensor] = {"ce": ce.detach()}
    E = None
    if p.name in ENERGY_METHODS or penalty_on:
        E = energy_of(logits, p.temperature)
    if p.name in ENERGY_METHODS:
        e_aux = E[n_in:]
        if split:
            e_aux = e_aux[aux_roles != ROLE_HIGH]
            if e_aux.numel() == 0:
                raise ValueError("aux_roles: no auxiliary row is routed to the energy loss")
        ls = L.energy_margin_loss(E[:n_in], e_aux, p.m_in, p.m_out, check=False)
        loss = loss + p.lambda_energy * ls
        logs["energy"] = ls.detach()
    elif p.name in ("oe", "oe_grad"):
        oe = L.outlier_exposure_loss(logits[n_in:, :K])
        loss = loss + p.lambda_oe * oe
        logs["oe"] = oe.detach()
    elif p.name == "dos":
        ab = L.absent_class_loss(logits[n_in:])
        loss = loss + p.lambda_abs * ab
        logs["abs"] = ab.detach()
    if penalty_on:
        is_id = torch.zeros(n_in + n_aux, dtype=torch.bool, device=x.device)
        is_id[:n_in] = True
        rows = None
        if split:
            rows = torch.ones(n_in + n_aux, dtype=torch.bool, device=x.device)
            rows[n_in:] = aux_roles.to(x.device) != ROLE_LOW
        pen, st = L.gradient_penalty(x, E, is_id, p.m_in, p.m_out, p.reduction, grad_space=p.grad_space,
                                     channel_std=p.channel_std, rows=rows, create_graph=True, return_stats=True,
                                     check=False)
        loss = loss + p.lambda_grad * pen
        logs["grad"] = pen.detach()
        logs.update({k: v.float() for k, v in st.as_dict().items()})
    logs["total"] = loss.detach()
    return loss, logs


def select_auxiliary(model: torch.nn.Module, candidates: torch.Tensor, n_select: int, *, n_clusters: int = 64,
                     start: int = 0, stop: Optional[int] = None, normalization: str = "norm", n_init: int = 3,
                     two_way: bool = True, generator: Optional[torch.Generator] = None, score: str = "energy",
                     return_roles: bool = False, **kmeans_kw):
    """Choose auxiliary rows from a candidate batch (GReg+ / DOS, method.md §3.2); returns indices into
    ``candidates`` (and roles with ``return_roles=True``, see :func:`greg_ood.sampling.energy_cluster_select`).

    The model scores the candidates in **eval** mode under ``torch.inference_mode`` (its previous mode is restored):
    penultimate features h and ``score="energy"`` -> E = -logsumexp(f) over all outputs (GReg+), or
    ``score="absent"`` -> softmax(f)_K, the absent-class probability (DOS). Both are "low = ID-like", sorted
    ascending. The returned batch size is ``n_select x (2 if two_way else 1)``.
    """
    if score not in ("energy", "absent"):
        raise ValueError(f"score: must be 'energy' or 'absent', got {score!r}")
    if candidates.dim() < 2 or candidates.shape[0] == 0:
        raise ValueError(f"candidates: expected a non-empty batch, got shape {tuple(candidates.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            z = model.features(candidates)
            logits = model.head(z)
            if score == "energy":
                w = energy_of(logits.float())
            else:
                w = torch.softmax(logits.float(), dim=1)[:, -1]
    finally:
        model.train(was_training)
    z, w = z.float().clone(), w.clone()  # outside inference mode: ordinary tensors
    with torch.no_grad():
        return energy_cluster_select(w, z, n_clusters, n_select, two_way=two_way, start=start, stop=stop,
                                     normalization=normalization, n_init=n_init, generator=generator,
                                     return_roles=return_roles, **kmeans_kw)
