"""Known-answer tests of greg_ood.scores (all detection scores: higher = more in-distribution)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from greg_ood import scores as S


def test_energy_and_logit_scores_hand_values():
    lg = torch.tensor([[0.0, 0.0], [1.0, 3.0], [-50.0, -50.0]])
    e = S.energy(lg)
    assert torch.allclose(e, torch.tensor([-math.log(2), -math.log(math.e + math.e ** 3), 50.0 - math.log(2)]))
    assert torch.allclose(S.energy(lg, temperature=2.0), -2 * torch.logsumexp(lg / 2, 1))
    assert torch.allclose(S.energy_score(lg), -e)
    assert torch.allclose(S.msp(lg), torch.tensor([0.5, 1 / (1 + math.exp(-2)), 0.5]))
    assert torch.allclose(S.max_logit(lg), torch.tensor([0.0, 3.0, -50.0]))
    assert torch.allclose(S.absent_class_score(lg), torch.tensor([0.5, 1 - 1 / (1 + math.exp(-2)), 0.5]))
    for name in S.LOGIT_SCORES:
        assert torch.equal(S.logit_score(name, lg), S.LOGIT_SCORES[name](lg))
    # large logits: no overflow
    assert torch.isfinite(S.energy(torch.tensor([[1e4, 1e4]]))).all()
    with pytest.raises(ValueError, match="name"):
        S.logit_score("odin", lg)
    with pytest.raises(ValueError, match="logits"):
        S.energy(torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        S.energy(lg, temperature=0.0)


def test_registry_covers_config_scores():
    from greg_ood.run import config

    assert set(S.SCORES) == set(config.SCORES)
    assert S.SCORES["odin"].kind == "model" and S.SCORES["mahalanobis"].kind == "fit"
    assert S.SCORES["absent_class"].needs_extra_output


class _Lin(nn.Module):
    num_classes = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_odin_matches_manual_computation():
    m = _Lin().double().eval()
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    std = [0.5, 0.25]
    T, eps = 1000.0, 0.0014
    xr = x.clone().requires_grad_(True)
    out = m(xr)
    loss = F.cross_entropy(out / T, out.argmax(1), reduction="sum")
    (g,) = torch.autograd.grad(loss, xr)
    sign = torch.where(g >= 0, 1.0, -1.0).double()
    xt = x - eps * sign / torch.tensor(std, dtype=torch.float64).view(1, 2, 1, 1)
    ref = torch.softmax(m(xt) / T, 1).amax(1)
    got = S.odin(m, x, temperature=T, epsilon=eps, channel_std=std)
    assert torch.allclose(got, ref.detach(), atol=1e-12)
    assert all(p.grad is None for p in m.parameters())
    # eps = 0: plain temperature-scaled MSP; works inside inference mode
    with torch.inference_mode():
        got0 = S.odin(m, x, temperature=T, epsilon=0.0)
    assert torch.allclose(got0, torch.softmax(m(x) / T, 1).amax(1).detach(), atol=1e-12)
    # the perturbation increases the max softmax (it descends the CE of the predicted class)
    assert bool((got >= got0 - 1e-12).all())


def test_mahalanobis_against_sklearn():
    from sklearn.covariance import EmpiricalCovariance

    rng = np.random.RandomState(0)
    means = rng.randn(4, 6) * 3
    y = rng.randint(0, 4, 400)
    f = means[y] + rng.randn(400, 6) @ rng.randn(6, 6)
    test = rng.randn(50, 6) * 3
    m = S.Mahalanobis().fit(torch.from_numpy(f), torch.from_numpy(y))
    got = m.score(torch.from_numpy(test)).double().numpy()
    mu = np.stack([f[y == c].mean(0) for c in range(4)])
    cov = EmpiricalCovariance(assume_centered=False).fit(f - mu[y])
    P = cov.precision_
    ref = np.max([-0.5 * np.einsum("nd,de,ne->n", test - mu[c], P, test - mu[c]) for c in range(4)], axis=0)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-4)
    # singular covariance (duplicated feature): pseudo-inverse, finite scores
    f2 = np.concatenate([f, f[:, :1]], 1)
    s2 = S.Mahalanobis().fit(f2, y).score(np.concatenate([test, test[:, :1]], 1))
    assert torch.isfinite(s2).all()
    assert np.allclose(s2.double().numpy(), ref, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="labels"):
        S.Mahalanobis().fit(f, y[:-1])
    with pytest.raises(ValueError, match="fit"):
        S.Mahalanobis().score(test)
