"""Training losses: cross-entropy, the energy margin loss L_S, outlier exposure, DOS's absent class, and the GReg
gradient penalty L_∇S (docs/method.md §2). Weights (λ) are applied by the caller (:mod:`greg_ood.methods`).

Every function takes tensors of one forward pass; none runs a model. Bad input raises ``ValueError`` naming the
argument. Checks that would need a device-to-host synchronisation (NaN, empty groups) can be switched off with
``check=False`` on the hot training path, where the caller builds the inputs itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .scores import channel_view
from .settings import check_margins as _margins

__all__ = ["cross_entropy", "energy_margin_loss", "outlier_exposure_loss", "absent_class_loss", "gradient_penalty",
           "PenaltyStats", "margin_stats", "REDUCTIONS", "GRAD_SPACES"]

REDUCTIONS = ("official", "per_sample")
GRAD_SPACES = ("normalized", "pixel")


def _vec(t, name: str, allow_empty: bool = False) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor [N], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if t.numel() == 0 and not allow_empty:
        raise ValueError(f"{name}: is empty")
    return t


def _finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or inf")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy ``mean_i [logsumexp(f_i) - f_i[y_i]]`` over all columns of ``logits`` (K-way, or K+1-way
    for DOS)."""
    if logits.dim() != 2:
        raise ValueError(f"logits: expected [N, C], got shape {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels: expected [N] with N = {logits.shape[0]}, got shape {tuple(labels.shape)}")
    return F.cross_entropy(logits, labels)


def energy_margin_loss(energy_id: torch.Tensor, energy_aux: torch.Tensor, m_in: float, m_out: float, *,
                       check: bool = True) -> torch.Tensor:
    """Energy margin loss L_S (Liu et al., NeurIPS 2020; the GReg paper's L_S; docs/method.md §2.1):

        L_S = mean_{i in ID}  relu(E_i - m_in)^2  +  mean_{j in AUX} relu(m_out - E_j)^2

    Two separate means, one per group (as coded by energy_ood / GReg), squared hinges. λ_S is applied by the caller.
    ``check`` also rejects NaN/inf energies (one host synchronisation).
    """
    _vec(energy_id, "energy_id")
    _vec(energy_aux, "energy_aux")
    _margins(m_in, m_out)
    if check:
        _finite(energy_id, "energy_id")
        _finite(energy_aux, "energy_aux")
    return F.relu(energy_id - m_in).pow(2).mean() + F.relu(m_out - energy_aux).pow(2).mean()


def outlier_exposure_loss(logits_aux: torch.Tensor) -> torch.Tensor:
    """Outlier exposure (Hendrycks et al., ICLR 2019): cross-entropy from the softmax to the uniform distribution,

        L_OE = mean_{j in AUX} [ logsumexp_k f_jk - (1/K) sum_k f_jk ]

    over the K columns given (pass ``logits[:, :K]``). λ_OE (0.5 in OE / energy_ood) is applied by the caller."""
    if logits_aux.dim() != 2 or logits_aux.shape[0] == 0:
        raise ValueError(f"logits_aux: expected a non-empty [N, K], got shape {tuple(logits_aux.shape)}")
    return (torch.logsumexp(logits_aux, dim=1) - logits_aux.mean(dim=1)).mean()


def absent_class_loss(logits_aux: torch.Tensor) -> torch.Tensor:
    """DOS absent-class loss (Jiang et al., ICLR 2024): every auxiliary row is labelled with the extra class K of a
    K+1-output model, ``mean_j CE(f_j, K)``. β (= λ_abs, 1 in DOS) is applied by the caller."""
    if logits_aux.dim() != 2 or logits_aux.shape[0] == 0 or logits_aux.shape[1] < 2:
        raise ValueError(f"logits_aux: expected a non-empty [N, K+1] with K >= 1, got shape {tuple(logits_aux.shape)}")
    target = torch.full((logits_aux.shape[0],), logits_aux.shape[1] - 1, dtype=torch.long, device=logits_aux.device)
    return F.cross_entropy(logits_aux, target)


@dataclass
class PenaltyStats:
    """Diagnostics of one :func:`gradient_penalty` call (detached 0-dim tensors; no host synchronisation).

    ``active_frac``: fraction of the penalised rows whose indicator is on (ID: E < m_in, aux: E > m_out).
    ``gradnorm_id`` / ``gradnorm_aux``: mean ``||grad_x E||_2`` over the *active* ID / aux rows (rows of G divided
    by their weight w; with train-mode BatchNorm this includes the small cross-row coupling). NaN when no row of the
    group is active. ``n_active_id`` / ``n_active_aux``: counts (float tensors).
    """

    active_frac: torch.Tensor
    gradnorm_id: torch.Tensor
    gradnorm_aux: torch.Tensor
    n_active_id: torch.Tensor
    n_active_aux: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"active_frac": self.active_frac, "gradnorm_id": self.gradnorm_id, "gradnorm_aux": self.gradnorm_aux}


#: energy percentiles reported by :func:`margin_stats`
MARGIN_PERCENTILES = (5, 50, 95)


def margin_stats(energy_id: torch.Tensor, energy_aux: torch.Tensor, m_in: float, m_out: float) -> dict:
    """Where one batch's energies sit relative to the margins (detached 0-dim tensors; no host synchronisation).

    ``active_frac_id`` = mean over ID rows of 1[E_i < m_in] and ``active_frac_aux`` = mean over auxiliary rows of
    1[E_j > m_out]: the indicators of :func:`gradient_penalty` (strict, as there), i.e. the share of each group the
    penalty acts on. Unlike ``PenaltyStats.active_frac`` they count every row of the batch (also under split routing,
    and for methods without a penalty, so that methods compare on the same margins). ``energy_id_p5`` … and
    ``energy_aux_p95``: the 5th, 50th and 95th percentiles of each group's energies (``torch.quantile``, linear
    interpolation).
    """
    _vec(energy_id, "energy_id")
    _vec(energy_aux, "energy_aux")
    e_id, e_aux = energy_id.detach().float(), energy_aux.detach().float()
    out = {"active_frac_id": (e_id < m_in).float().mean(), "active_frac_aux": (e_aux > m_out).float().mean()}
    q = torch.tensor([p / 100 for p in MARGIN_PERCENTILES], device=e_id.device)
    for group, e in (("id", e_id), ("aux", e_aux)):
        for p, v in zip(MARGIN_PERCENTILES, torch.quantile(e, q)):
            out[f"energy_{group}_p{p}"] = v
    return out


def gradient_penalty(inputs: torch.Tensor, energy: torch.Tensor, is_id: torch.Tensor, m_in: float, m_out: float,
                     reduction: str = "official", *, grad_space: str = "normalized",
                     channel_std: Optional[Union[Sequence[float], torch.Tensor]] = None,
                     rows: Optional[torch.Tensor] = None, create_graph: bool = True, return_stats: bool = False,
                     check: bool = True):
    """GReg gradient penalty L_∇S on the input gradient of the energy, from **one** forward pass
    (docs/method.md §2.2-2.5).

    ``inputs``: the (normalised) batch ``x = cat(x_id, x_aux)`` with ``requires_grad=True`` whose forward produced
    ``energy`` (``E = -logsumexp(f(x))``, shape [N]); ``is_id``: bool mask [N] (True = ID row, False = auxiliary).

    Indicators, constants (no gradient flows through them), strict like the official code:
        a_i = 1[E_i < m_in]  (ID rows),    a_j = 1[E_j > m_out]  (auxiliary rows)
    The paper writes ``<=`` / ``>=``; the two differ only at exact ties. Margin-violating rows get no penalty.

    ``reduction="official"`` (default; the official ``train_sea.py``): the authors differentiate the scalar
        g = -(1/n_in) sum_ID relu(m_in - E_i) + (1/n_out) sum_AUX relu(E_j - m_out)
    on a second forward with ``torch.autograd.functional.jacobian``; since d relu(u)/du = 1[u > 0] this equals
        G = grad_x sum_i a_i w_i E_i,   w = 1/n_in on ID rows, 1/n_out on aux rows   (BatchNorm coupling included),
        penalty = (1/N) sum_{i=1..N} ||G_i||_2                         (mean over all N rows, ID and aux together).
    ``reduction="per_sample"`` (the paper's expectation form):
        penalty = (1/n_in) sum_ID a_i ||grad_{x_i} E_i||_2 + (1/n_out) sum_AUX a_j ||grad_{x_j} E_j||_2
    computed as G = grad_x sum_i a_i E_i (exact per-sample gradients need BatchNorm without batch coupling, e.g. eval
    mode). With per-sample gradients penalty_official = penalty_per_sample / N, hence **λ_per_sample = λ_official / N**
    (e.g. N = 192 for GReg+ at B = 64 two-way: λ_ps ≈ 0.0052 for λ_off = 1; docs/method.md §2.4).

    ``grad_space="pixel"`` reports/penalises the gradient w.r.t. the [0, 1] pixel input: channel c of G is divided by
    ``channel_std[c]`` (x_norm = (x_pix - mean) / std). ``rows`` (optional bool mask [N]) restricts the penalty to a
    subset of rows (split routing of two-way picks): excluded rows are dropped entirely (they count neither in
    n_in / n_out nor in N). Norms use ``torch.linalg.vector_norm`` (zero subgradient at 0, no NaN for all-zero rows).
    ``create_graph=True`` keeps the graph so the penalty trains (double backprop).

    Returns the penalty (0-dim tensor), or ``(penalty, PenaltyStats)`` with ``return_stats=True``.
    Raises ``ValueError`` naming the argument for: shape mismatch, non-bool masks, an empty ID or aux group, NaN
    energy (``check=True``), ``m_in >= m_out``, ``inputs`` without ``requires_grad``, unknown reduction/grad_space.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {REDUCTIONS}, got {reduction!r}")
    if grad_space not in GRAD_SPACES:
        raise ValueError(f"grad_space: must be one of {GRAD_SPACES}, got {grad_space!r}")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2:
        raise ValueError(f"inputs: expected a batch tensor [N, ...], got {getattr(inputs, 'shape', type(inputs))}")
    if not inputs.requires_grad:
        raise ValueError("inputs: must have requires_grad=True and be the tensor the forward pass started from")
    _vec(energy, "energy")
    N = inputs.shape[0]
    if energy.shape[0] != N:
        raise ValueError(f"energy: has {energy.shape[0]} rows but inputs has {N}")
    if not isinstance(is_id, torch.Tensor) or is_id.dtype != torch.bool:
        raise ValueError(f"is_id: expected a bool tensor, got {getattr(is_id, 'dtype', type(is_id))}")
    if is_id.shape != (N,):
        raise ValueError(f"is_id: expected shape ({N},), got {tuple(is_id.shape)}")
    if rows is not None:
        if not isinstance(rows, torch.Tensor) or rows.dtype != torch.bool:
            raise ValueError(f"rows: expected a bool tensor, got {getattr(rows, 'dtype', type(rows))}")
        if rows.shape != (N,):
            raise ValueError(f"rows: expected shape ({N},), got {tuple(rows.shape)}")
    _margins(m_in, m_out)
    if not energy.requires_grad:
        raise ValueError("energy: carries no autograd graph; compute it from `inputs` with gradients enabled")

    dt = energy.dtype
    id_f = is_id.to(dt)
    aux_f = 1.0 - id_f
    if rows is not None:
        keep = rows.to(dt)
        id_f, aux_f = id_f * keep, aux_f * keep
    n_in = id_f.sum()
    n_out = aux_f.sum()
    if check:
        _finite(energy.detach(), "energy")
        if float(n_in) == 0:
            raise ValueError("is_id: the ID group is empty (no ID rows" + (" among `rows`)" if rows is not None else ")"))
        if float(n_out) == 0:
            raise ValueError("is_id: the auxiliary group is empty (no aux rows"
                             + (" among `rows`)" if rows is not None else ")"))

    e = energy.detach()
    active = id_f * (e < m_in).to(dt) + aux_f * (e > m_out).to(dt)  # constants
    if reduction == "official":
        w = id_f / n_in.clamp_min(1) + aux_f / n_out.clamp_min(1)
    else:
        w = id_f + aux_f
    coef = (active * w).detach()
    (G,) = torch.autograd.grad((coef * energy).sum(), inputs, create_graph=create_graph)
    if grad_space == "pixel":
        if channel_std is None:
            raise ValueError("channel_std: grad_space='pixel' needs the per-channel std of the input normalisation")
        G = G / channel_view(channel_std, G)
    norms = torch.linalg.vector_norm(G.reshape(N, -1), ord=2, dim=1)
    if reduction == "official":
        n_rows = (id_f + aux_f).sum()
        penalty = (norms * (id_f + aux_f)).sum() / n_rows.clamp_min(1)
    else:
        penalty = (norms * id_f).sum() / n_in.clamp_min(1) + (norms * aux_f).sum() / n_out.clamp_min(1)
    if not return_stats:
        return penalty
    with torch.no_grad():
        nd = norms.detach()
        # per-row ||grad E|| = ||G_i|| / w_i on active rows
        per_row = torch.where(coef > 0, nd / torch.where(coef > 0, w, torch.ones_like(w)), torch.zeros_like(nd))
        a_id, a_aux = active * id_f, active * aux_f
        na_id, na_aux = a_id.sum(), a_aux.sum()
        nan = torch.tensor(float("nan"), dtype=dt, device=nd.device)
        stats = PenaltyStats(
            active_frac=active.sum() / (id_f + aux_f).sum().clamp_min(1),
            gradnorm_id=torch.where(na_id > 0, (per_row * a_id).sum() / na_id.clamp_min(1), nan),
            gradnorm_aux=torch.where(na_aux > 0, (per_row * a_aux).sum() / na_aux.clamp_min(1), nan),
            n_active_id=na_id, n_active_aux=na_aux)
    return penalty, stats
