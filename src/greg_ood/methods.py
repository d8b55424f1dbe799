"""One training step per method, assembled from the loss terms its registry entry declares
(:mod:`greg_ood.registry`), plus the clustering selection of the auxiliary batch (GReg+, DOS).

| term | weight (``LossCfg``) | formula (:mod:`greg_ood.losses`) | methods |
|---|---|---|---|
| ``ce`` | 1 | cross-entropy on the ID rows, over all outputs (K, or K+1 for DOS) | every method |
| ``energy`` | ``lambda_energy`` λ_S | energy margin loss L_S (Liu et al. 2020) | energy, greg, greg_plus |
| ``oe`` | ``lambda_oe`` | outlier exposure on the first K outputs (Hendrycks et al. 2019) | oe, oe_grad |
| ``abs`` | ``lambda_abs`` β | CE(aux -> the absent class K) (Jiang et al. 2024) | dos |
| ``grad`` | ``lambda_grad`` λ_∇S | GReg gradient penalty L_∇S (Sharifi et al. 2024) | oe_grad, greg, greg_plus |

Every method with auxiliary data runs **one** forward over ``cat(x_id, x_aux)`` (shared BatchNorm statistics, as
energy_ood and OE do); the penalty uses the input gradient of that same forward and is not computed at all when
``lambda_grad == 0``. The terms are added in the order the entry lists them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import torch

from . import losses as L
from . import registry
from .poem import PoemSelector
from .settings import LossCfg, PoemCfg
from .sampling import ROLE_HIGH, ROLE_LOW, energy_cluster_select
from .scores import energy as energy_of
from .scores import eval_no_grad

__all__ = ["MethodLoss", "training_step", "select_auxiliary", "make_selector"]


@dataclass(frozen=True)
class MethodLoss:
    """The loss of one method, built once per run: its registry entry and its loss settings exactly as params.yaml
    validated them (margins and weights are checked there, once). ``channel_std`` (the per-channel std of the input
    normalisation) is needed by ``grad_space="pixel"`` only."""

    method: registry.Method
    cfg: LossCfg
    channel_std: Optional[Union[Sequence[float], torch.Tensor]] = None

    def __post_init__(self):
        if self.cfg.grad_space == "pixel" and self.channel_std is None:
            raise ValueError("channel_std: grad_space='pixel' needs the per-channel std of the input normalisation")

    @classmethod
    def of(cls, method: str, channel_std=None, **settings) -> "MethodLoss":
        """From a method name and ``LossCfg`` fields (the method's defining loss settings, then the ``LossCfg``
        defaults, fill the rest), validated as params.yaml is: for tests and tools that have no params file."""
        entry = registry.get(method)
        cfg = LossCfg.model_validate(registry.deep_merge(entry.settings.get("loss", {}), settings))
        return cls(entry, cfg, channel_std)

    @property
    def penalty_on(self) -> bool:
        """The gradient penalty is part of this loss (the method has it and ``lambda_grad > 0``)."""
        return self.method.has_penalty and self.cfg.lambda_grad > 0

    def with_lambda_grad(self, value: float) -> "MethodLoss":
        """The same loss with another penalty weight (a DDP rank's share, :mod:`greg_ood.run.distributed`)."""
        return dataclasses.replace(self, cfg=self.cfg.model_copy(update={"lambda_grad": value}))


class _Step(NamedTuple):
    """What the terms of one step read: the (joint) input and its logits, the ID row count, K, the energies (None
    when no term needs them) and the auxiliary rows' roles under split routing (else None)."""

    x: torch.Tensor
    logits: torch.Tensor
    n_in: int
    K: int
    E: Optional[torch.Tensor]
    roles: Optional[torch.Tensor]


def _energy_term(s: _Step, loss: MethodLoss):
    """L_S on the ID rows and the auxiliary rows (split routing: the rows not picked as high-score only)."""
    e_aux = s.E[s.n_in:]
    if s.roles is not None:
        e_aux = e_aux[s.roles != ROLE_HIGH]
        if e_aux.numel() == 0:
            raise ValueError("aux_roles: no auxiliary row is routed to the energy loss")
    return L.energy_margin_loss(s.E[:s.n_in], e_aux, loss.cfg.m_in, loss.cfg.m_out, check=False), {}


def _oe_term(s: _Step, loss: MethodLoss):
    """L_OE on the auxiliary rows' first K outputs."""
    return L.outlier_exposure_loss(s.logits[s.n_in:, :s.K]), {}


def _abs_term(s: _Step, loss: MethodLoss):
    """The absent-class loss on the auxiliary rows (all K+1 outputs)."""
    return L.absent_class_loss(s.logits[s.n_in:]), {}


def _grad_term(s: _Step, loss: MethodLoss):
    """L_∇S over every row (split routing: ID rows and the auxiliary rows not picked as low-score), with its
    :class:`~greg_ood.losses.PenaltyStats` as extra logs."""
    n = s.x.shape[0]
    is_id = torch.zeros(n, dtype=torch.bool, device=s.x.device)
    is_id[:s.n_in] = True
    rows = None
    if s.roles is not None:
        rows = torch.ones(n, dtype=torch.bool, device=s.x.device)
        rows[s.n_in:] = s.roles.to(s.x.device) != ROLE_LOW
    c = loss.cfg
    pen, st = L.gradient_penalty(s.x, s.E, is_id, c.m_in, c.m_out, c.reduction, grad_space=c.grad_space,
                                 channel_std=loss.channel_std, rows=rows, create_graph=True, return_stats=True,
                                 check=False)
    return pen, {k: v.float() for k, v in st.as_dict().items()}




def training_step(model: torch.nn.Module, x_id: torch.Tensor, y_id: torch.Tensor, x_aux: Optional[torch.Tensor],
                  loss: MethodLoss, aux_roles: Optional[torch.Tensor] = None, *, diagnostics: bool = False):
    """Loss of one training step of ``loss.method`` (the caller runs ``backward`` and the optimiser step).

    Inputs are normalised batches on the model's device; the model should be in train mode. Returns ``(loss, logs)``
    with detached 0-dim tensors in ``logs`` (no host synchronisation): ``ce``, ``total`` and each further term of the
    method, unweighted (``energy`` = L_S, ``oe``, ``abs``, ``grad`` = the penalty), plus with the penalty
    ``active_frac``, ``gradnorm_id``, ``gradnorm_aux`` (see :class:`greg_ood.losses.PenaltyStats`; NaN when no row of
    the group is active).

    ``diagnostics=True`` (the trainer asks on logging steps only) adds :func:`greg_ood.losses.margin_stats` of this
    step's energies against the configured margins, for every method with auxiliary data, penalty or not, so that
    methods compare on the same footing. The energies are the ones the step computed, else computed from the same
    logits (E over all outputs); they are detached and change nothing in the step.

    ``aux_roles`` (from :func:`select_auxiliary` with ``return_roles=True``) is used only with ``routing="split"``:
    roles 1 feed L_S only, roles 2 the penalty only, roles 0 both. Without roles (or with ``routing="joint"``, the
    official behaviour) every auxiliary row feeds both terms.
    """
    m, c = loss.method, loss.cfg
    if x_id.dim() < 2 or x_id.shape[0] == 0:
        raise ValueError(f"x_id: expected a non-empty batch, got shape {tuple(x_id.shape)}")
    if y_id.dim() != 1 or y_id.shape[0] != x_id.shape[0]:
        raise ValueError(f"y_id: expected [{x_id.shape[0]}] labels, got shape {tuple(y_id.shape)}")
    if not m.aux:
        logits = model(x_id)
        ce = L.cross_entropy(logits, y_id)
        return ce, {"ce": ce.detach(), "total": ce.detach()}
    if x_aux is None or x_aux.shape[0] == 0:
        raise ValueError(f"x_aux: method {m.name!r} needs a non-empty auxiliary batch")
    if x_aux.shape[1:] != x_id.shape[1:]:
        raise ValueError(f"x_aux: image shape {tuple(x_aux.shape[1:])} differs from x_id's {tuple(x_id.shape[1:])}")
    n_in, n_aux = x_id.shape[0], x_aux.shape[0]
    split = c.routing == "split" and aux_roles is not None
    if split and (aux_roles.dim() != 1 or aux_roles.shape[0] != n_aux):
        raise ValueError(f"aux_roles: expected [{n_aux}] roles, got shape {tuple(aux_roles.shape)}")

    x = torch.cat([x_id, x_aux], dim=0)
    penalty_on = loss.penalty_on
    if penalty_on:
        x = x.detach().requires_grad_(True)
    logits = model(x)
    K = getattr(model, "num_classes", None)
    if K is None:
        K = logits.shape[1] - m.extra_outputs
    if m.extra_outputs and logits.shape[1] != K + m.extra_outputs:
        raise ValueError(f"model: method {m.name!r} needs K+{m.extra_outputs} outputs (build it with extra_outputs="
                         f"{m.extra_outputs}); got {logits.shape[1]} outputs for num_classes={K}")
    ce = L.cross_entropy(logits[:n_in], y_id)  # all outputs: K-way, or K+1-way for DOS
    total = ce
    logs: dict[str, torch.Tensor] = {"ce": ce.detach()}
    E = energy_of(logits) if "energy" in m.terms or penalty_on else None
    step = _Step(x, logits, n_in, K, E, aux_roles if split else None)
    # the weighted sum, in the order the registry lists every entry's terms (ce, then L_S / L_OE / L_abs, then L_∇S):
    #   total = L_CE + λ_S·L_S + λ_OE·L_OE + β·L_abs + λ_∇S·L_∇S   (each term only when the method has it)
    if "energy" in m.terms:
        l_s, _ = _energy_term(step, loss)
        total = total + c.lambda_energy * l_s
        logs["energy"] = l_s.detach()
    if "oe" in m.terms:
        l_oe, _ = _oe_term(step, loss)
        total = total + c.lambda_oe * l_oe
        logs["oe"] = l_oe.detach()
    if "abs" in m.terms:
        l_abs, _ = _abs_term(step, loss)
        total = total + c.lambda_abs * l_abs
        logs["abs"] = l_abs.detach()
    if penalty_on:
        l_grad, stats = _grad_term(step, loss)
        total = total + c.lambda_grad * l_grad
        logs["grad"] = l_grad.detach()
        logs.update(stats)
    if diagnostics:
        with torch.no_grad():
            e = E.detach() if E is not None else energy_of(logits.detach())
            logs.update(L.margin_stats(e[:n_in], e[n_in:], c.m_in, c.m_out))
    logs["total"] = total.detach()
    return total, logs


def select_auxiliary(model: torch.nn.Module, candidates: torch.Tensor, n_select: int, *, n_clusters: int = 64,
                     start: int = 0, stop: Optional[int] = None, normalization: str = "norm", n_init: int = 3,
                     two_way: bool = True, generator: Optional[torch.Generator] = None, score: str = "energy",
                     return_roles: bool = False, **kmeans_kw):
    """Choose auxiliary rows from a candidate batch (GReg+ / DOS, docs/method.md §3.2); returns indices into
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
    def features_and_score(m):
        z = m.features(candidates)
        logits = m.head(z).float()
        return z, (energy_of(logits) if score == "energy" else torch.softmax(logits, dim=1)[:, -1])

    z, w = eval_no_grad(model, features_and_score)
    z = z.float()
    with torch.no_grad():
        return energy_cluster_select(w, z, n_clusters, n_select, two_way=two_way, start=start, stop=stop,
                                     normalization=normalization, n_init=n_init, generator=generator,
                                     return_roles=return_roles, **kmeans_kw)


def make_selector(method: registry.Method, train_cfg, reduce=None):
    """The stateful auxiliary-batch selector of ``method`` for one run (None when it has none): ``"poem"`` ->
    :class:`~greg_ood.poem.PoemSelector` with the run's ``train.poem`` settings (their defaults when unset).
    ``reduce`` sums a tensor in place over the DDP ranks, or is None."""
    if method.selector is None:
        return None
    if method.selector == "poem":
        return PoemSelector(train_cfg.poem or PoemCfg(), reduce)
    raise ValueError(f"{method.name}: no selector of kind {method.selector!r}")
