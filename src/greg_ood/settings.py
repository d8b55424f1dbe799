"""The settings the method itself reads, validated once: the loss weights and margins (:class:`LossCfg`), the
clustering selection of the auxiliary batch (:class:`SamplingCfg`) and POEM's posterior (:class:`PoemCfg`).

They are the ``train.loss``, ``train.sampling`` and ``train.poem`` sections of ``params.yaml``;
:mod:`greg_ood.run.config` composes them into the full schema. They live here, beside the maths, so that the method
modules (:mod:`greg_ood.methods`, :mod:`greg_ood.poem`) take them as they are without importing the run machinery.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: the paper's margins for CIFAR (m_in, m_out) = (-25, -7) (Sharifi et al. 2024, Sec. 5; the official code's defaults)
PAPER_MARGINS = (-25.0, -7.0)


def check_margins(m_in: float, m_out: float) -> None:
    """The energy margins must be finite numbers with m_in < m_out: ID energies are pushed below m_in and outlier
    energies above m_out (the paper's Eq. 3 and Eq. 5); ``ValueError`` naming the margin otherwise. Checked once when
    params.yaml is validated (:class:`LossCfg`), and by the loss functions for direct callers."""
    for n, v in (("m_in", m_in), ("m_out", m_out)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"{n}: expected a finite number, got {v!r}")
    if not m_in < m_out:
        raise ValueError(f"m_in ({m_in}) must be < m_out ({m_out}): ID energies are pushed below m_in and outlier "
                         "energies above m_out")


class _Model(BaseModel):
    #: strict: no silent coercion (``true`` is not the integer 1, ``"10"`` and ``10.0`` are not 10); finite floats only
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class LossCfg(_Model):
    """The loss weights and margins, validated here once; the training step uses this object as it is."""

    lambda_energy: float = Field(0.1, ge=0)
    lambda_grad: float = Field(1.0, ge=0)
    m_in: float = PAPER_MARGINS[0]
    m_out: float = PAPER_MARGINS[1]
    reduction: Literal["official", "per_sample"] = "official"
    grad_space: Literal["normalized", "pixel"] = "normalized"
    routing: Literal["joint", "split"] = "joint"
    lambda_oe: float = Field(0.5, ge=0)
    lambda_abs: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _margins(self) -> "LossCfg":
        check_margins(self.m_in, self.m_out)
        return self


class SamplingCfg(_Model):
    #: candidates scored per step: C = pool / |D_in| * B (the official rule) unless candidate_batch is set
    pool: Union[Literal["all"], int] = "all"
    candidate_batch: Optional[int] = Field(None, gt=0)
    n_clusters: int = Field(64, gt=0)
    start: int = Field(0, ge=0)
    stop: Optional[int] = Field(None, gt=0)
    normalization: Literal["norm", "normBatch", "normFeature", "latent"] = "norm"
    n_init: int = Field(3, gt=0)
    two_way: bool = True

    @field_validator("pool")
    @classmethod
    def _pool(cls, v):
        if isinstance(v, int) and v <= 0:
            raise ValueError("must be 'all' or a positive integer")
        return v

    @model_validator(mode="after")
    def _window(self) -> "SamplingCfg":
        if self.stop is not None and self.stop <= self.start:
            raise ValueError(f"stop ({self.stop}) must be > start ({self.start})")
        return self


class PoemCfg(_Model):
    """POEM's Bayesian linear model and posterior sampling (defaults: the official code's ``train_poem.py``)."""

    #: σ, the prior variance of the linear weights (``--sigma``)
    prior_var: float = Field(20.0, gt=0)
    #: σ_n, the noise variance of the regression targets (``--sigma_n``)
    noise_var: float = Field(0.5, gt=0)
    #: the regression target: -target for ID rows, +target for outliers (``--conf``)
    target: float = Field(3.0, gt=0)
    #: epochs of features the posterior is fitted on (``--BUF_SIZE``)
    buffer_epochs: int = Field(4, gt=0)
