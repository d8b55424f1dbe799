"""The method registry: each training method is declared once, in one :class:`Method` entry.

An entry says everything the rest of the code asks about a method: its display name (and, by its place in
:data:`REGISTRY`, its place in the tables), whether it trains on auxiliary outliers and how its auxiliary batch is
chosen, how many extra outputs its model has, which score it detects with, which loss terms it sums, and the settings
that define it. Config validation (:mod:`greg_ood.run.config`), the training step (:mod:`greg_ood.methods`), the trainer,
the stage wiring (:mod:`greg_ood.run.pipeline`) and evaluation read these entries; no other module tests a method's name.
Adding a method means adding its entry here, plus its own loss term or selection score in :mod:`greg_ood.methods`
when it brings a new one.

**Merge order of the settings.** The training settings of one experiment are three layers, the later winning::

    suites.<suite>.train   <-   Method.settings   <-   suites.<suite>.method_params.<method>

The method-defining settings sit *above* the suite's shared ``train`` section on purpose. ``train`` holds what every
method of a suite shares, and that includes values that only make sense for some methods: the mini suite's ``train``
says ``loss.lambda_grad: 1`` (GReg's λ) and ``sampling.two_way: true`` (GReg+'s two-way picks). If the shared section
won, Energy would be recorded with λ_∇ = 1 (it is the λ = 0 point of the λ ablation) and DOS would silently sample
two-way. A setting that defines a method can therefore only be changed on purpose, for that method alone, through
``method_params.<method>``.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["Method", "Selection", "SELECTORS", "REGISTRY", "METHODS", "ORDER", "TERMS", "get", "trained", "display_name",
           "check_trained", "penalty_pairs", "deep_merge", "resolve_settings", "leaf_paths", "replaces"]

#: the loss terms a method can sum (their names are also the keys of the training logs): cross-entropy on the ID
#: rows, the energy margin loss L_S, outlier exposure, the absent-class loss of DOS, and the GReg gradient penalty
TERMS = ("ce", "energy", "oe", "abs", "grad")


@dataclass(frozen=True)
class Selection:
    """The auxiliary batch is chosen by clustering a larger candidate batch (GReg+ paper Algorithm 1, DOS).

    ``score`` ranks the candidates inside each cluster, low = ID-like: ``"energy"`` (E over all outputs, GReg+) or
    ``"absent"`` (the probability of the absent class K, DOS). The direction (one-way picks or two-way) and the
    window are the ``sampling`` settings; a method whose direction is part of its definition fixes them in
    :attr:`Method.settings`.
    """

    score: str

    def __post_init__(self):
        if self.score not in ("energy", "absent"):
            raise ValueError(f"score: must be 'energy' or 'absent', got {self.score!r}")


#: the kinds of stateful auxiliary-batch selector (:attr:`Method.selector`); :func:`greg_ood.methods.make_selector`
#: builds one per run. A selector answers ``select(model, candidates, x_id, n_select, *, epoch, generator) ->
#: (indices, roles or None)`` and carries its state in ``state_dict()`` / ``load_state_dict()``, which the trainer
#: saves in and restores from its checkpoints. ``"poem"``: POEM's posterior sampling (:class:`greg_ood.poem.PoemSelector`)
SELECTORS = ("poem",)


@dataclass(frozen=True)
class Method:
    """Everything the code asks about one method (see the module docstring)."""

    name: str
    #: name in tables and figures
    display: str
    #: loss terms (a subset of :data:`TERMS` in its order, always starting with ``"ce"``: the order they are added in)
    terms: tuple[str, ...]
    #: trains on auxiliary outliers (every method but the CE pretraining objective)
    aux: bool = True
    #: None: a random auxiliary batch of ``aux_batch_size`` rows; else chosen by clustering candidates
    selection: Optional[Selection] = None
    #: a stateful selector (one of :data:`SELECTORS`) instead of the clustering ``selection``
    selector: Optional[str] = None
    #: outputs beyond the K classes (DOS: 1, the absent class)
    extra_outputs: int = 0
    #: detection score at evaluation; None = the suite's ``eval.primary``
    detection_score: Optional[str] = None
    #: the settings that define the method, a partial ``TrainCfg`` mapping (merge order: module docstring)
    settings: dict[str, Any] = field(default_factory=dict)
    #: one of the suites' fine-tuning methods (False for ``ce``, which only pretrains)
    trained: bool = True
    #: the method this one adds the gradient penalty to (its partner in the "+ grad" ablation), if any
    adds_penalty_to: Optional[str] = None
    #: line colour in every figure (matplotlib colour); methods with the gradient term are drawn dashed
    color: str = "0.3"

    def __post_init__(self):
        unknown = [t for t in self.terms if t not in TERMS]
        in_order = [t for t in TERMS if t in self.terms] == list(self.terms)
        if unknown or not self.terms or self.terms[0] != "ce" or not in_order:
            raise ValueError(f"{self.name}: terms must start with 'ce' and follow the order of {TERMS}, got {self.terms}")
        if not self.aux and (len(self.terms) > 1 or self.selection is not None):
            raise ValueError(f"{self.name}: a method without auxiliary data has only the 'ce' term and no selection")
        if self.selection is not None and self.selector is not None:
            raise ValueError(f"{self.name}: give a clustering selection or a selector, not both")
        if self.selector is not None and self.selector not in SELECTORS:
            raise ValueError(f"{self.name}: selector must be one of {SELECTORS}, got {self.selector!r}")
        if not self.aux and self.selector is not None:
            raise ValueError(f"{self.name}: a method without auxiliary data has no selector")
        if self.extra_outputs < 0:
            raise ValueError(f"{self.name}: extra_outputs must be >= 0, got {self.extra_outputs}")
        if self.adds_penalty_to is not None and "grad" not in self.terms:
            raise ValueError(f"{self.name}: adds_penalty_to needs the 'grad' term")

    @property
    def selects(self) -> bool:
        """Chooses its auxiliary batch from a larger candidate batch (clustering or a selector)."""
        return self.selection is not None or self.selector is not None

    @property
    def has_penalty(self) -> bool:
        """Has the GReg gradient penalty (active when ``loss.lambda_grad > 0``)."""
        return "grad" in self.terms


_NO_GRAD = {"loss": {"lambda_grad": 0.0}}
_NO_GRAD_NO_ENERGY = {"loss": {"lambda_grad": 0.0, "lambda_energy": 0.0}}

#: POEM's posterior settings at their defaults (:class:`greg_ood.settings.PoemCfg`; ``method_params`` may change them)
_POEM = {"poem": {}}


#: every method, in table order (``ce`` first: it is the pretraining objective, not a table row)
REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("ce", "CE (pretraining)", ("ce",), aux=False, trained=False),
    # Liu et al. 2020: energy-margin fine-tuning; the λ_∇ = 0 point of GReg's λ ablation
    Method("energy", "Energy", ("ce", "energy"), settings=_NO_GRAD, color="tab:blue"),
    # Hendrycks et al. 2019: outlier exposure (uniform posterior on the outliers)
    Method("oe", "OE", ("ce", "oe"), settings=_NO_GRAD_NO_ENERGY, color="tab:green"),
    # the paper's "OE + grad" ablation; the combination (GReg's energy penalty with the same margins, added to OE) is
    # this project's construction: the paper does not say how it combined them
    Method("oe_grad", "OE + grad", ("ce", "oe", "grad"), settings={"loss": {"lambda_energy": 0.0}},
           adds_penalty_to="oe", color="tab:olive"),
    # Jiang et al. 2024: K+1 outputs, outliers trained into the absent class, one-way clustered picks from rank 16,
    # detection by the absent-class probability
    Method("dos", "DOS", ("ce", "abs"), selection=Selection("absent"), extra_outputs=1,
           detection_score="absent_class",
           settings={**_NO_GRAD_NO_ENERGY, "sampling": {"start": 16, "two_way": False}}, color="tab:purple"),
    # Sharifi et al. 2024: energy loss plus the gradient penalty; GReg+ adds the energy-based cluster sampling
    Method("greg", "GReg", ("ce", "energy", "grad"), adds_penalty_to="energy", color="tab:red"),
    Method("greg_plus", "GReg+", ("ce", "energy", "grad"), selection=Selection("energy"), color="tab:orange"),
    # Ming et al. 2022: the energy margin loss on the outliers closest to the boundary of a Thompson-sampled Bayesian
    # linear model on the features; "POEM + grad" is the paper's ablation row (our combination: GReg's penalty on the
    # same energies and margins, added to POEM's loss)
    Method("poem", "POEM", ("ce", "energy"), selector="poem",
           settings={**_NO_GRAD, **_POEM}, color="tab:brown"),
    Method("poem_grad", "POEM + grad", ("ce", "energy", "grad"), selector="poem", settings=_POEM,
           adds_penalty_to="poem", color="tab:pink"),
)}

#: every method name (the built-in table)
METHODS = tuple(REGISTRY)
#: the fine-tuning methods in table order (the built-in table; the report sorts its rows by it)
ORDER = tuple(n for n, m in REGISTRY.items() if m.trained)


def get(name: str) -> Method:
    """The entry of ``name``; ``ValueError`` naming the known methods when there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(REGISTRY)}") from None


def trained() -> tuple[str, ...]:
    """The fine-tuning methods of the current registry, in table order."""
    return tuple(n for n, m in REGISTRY.items() if m.trained)


def penalty_pairs() -> list[tuple[str, str]]:
    """``(method, method + gradient penalty)`` for every entry that declares ``adds_penalty_to``, in the table order
    of the method without the penalty (the default pairs of the "+ grad" ablation)."""
    order = list(REGISTRY)
    pairs = [(m.adds_penalty_to, m.name) for m in REGISTRY.values() if m.adds_penalty_to is not None]
    return sorted(pairs, key=lambda p: order.index(p[0]) if p[0] in order else len(order))


def check_trained(name: str) -> str:
    """``name`` when it is a fine-tuning method, else ``ValueError`` with the closest name and the allowed ones."""
    names = trained()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f" — did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {name!r}{hint} Allowed: {', '.join(names)}.")
    return name



def display_name(name: str) -> str:
    """The table name of method ``name`` (a name the registry does not know is returned unchanged)."""
    m = REGISTRY.get(name)
    return m.display if m is not None else name


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of ``base`` with ``override`` merged in: nested mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_settings(name: str, shared: dict, override: Optional[dict]) -> dict:
    """The raw training settings of method ``name``: ``shared`` (the suite's ``train``) <- the method's defining
    settings <- ``override`` (its ``method_params``); :meth:`greg_ood.run.config.Config.train_cfg` validates them."""
    return deep_merge(deep_merge(shared, get(name).settings), override or {})


def leaf_paths(mapping: Optional[dict], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key paths of the values a nested mapping sets (a non-empty mapping is descended into; an empty one sets
    nothing, as :func:`deep_merge` treats it), in order."""
    out = []
    for k, v in (mapping or {}).items():
        if isinstance(v, dict):
            out += leaf_paths(v, (*prefix, k))
        else:
            out.append((*prefix, k))
    return out


def replaces(path: tuple[str, ...], layer: Optional[dict]) -> bool:
    """Whether merging ``layer`` over the settings replaces the value at ``path`` (it sets that key, or a key above
    it to a value that is not a mapping)."""
    return any(path[:len(p)] == p for p in leaf_paths(layer))
