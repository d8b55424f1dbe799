"""Known-answer tests of greg_ood.certify."""
from __future__ import annotations

import pytest
import torch

from greg_ood import certify as CT
from greg_ood import models
from greg_ood.scores import energy


def test_energy_grad_norms_are_per_sample_eval_mode_gradients():
    torch.manual_seed(0)
    m = models.build("small_cnn", 4, in_channels=1).double()
    m.train()
    x = torch.randn(7, 1, 12, 12, dtype=torch.float64)
    got = CT.energy_grad_norms(m, x, batch_size=3)
    assert m.training  # mode restored
    m.eval()
    ref = []
    for i in range(7):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(m(xi))[0], xi)
        ref.append(g.norm())
    assert torch.allclose(got, torch.stack(ref), atol=1e-10)
    assert all(p.grad is None for p in m.parameters())
    pix = CT.energy_grad_norms(m, x, grad_space="pixel", channel_std=[0.25])
    assert torch.allclose(pix, got / 0.25, atol=1e-10)
    with torch.inference_mode():
        assert torch.allclose(CT.energy_grad_norms(m, x), got)
    with pytest.raises(ValueError, match="channel_std"):
        CT.energy_grad_norms(m, x, grad_space="pixel")


def test_threshold_and_radius_hand_values():
    e_id = torch.arange(1, 21, dtype=torch.float32)
    assert CT.threshold_at_tpr(e_id, 0.95) == 19.0  # 19 of 20 ID energies are <= 19
    assert CT.threshold_at_tpr(e_id, 1.0) == 20.0
    e = torch.tensor([-2.0, 3.0, 0.0, -1.0, 5.0])
    g = torch.tensor([1.0, 2.0, 0.0, 4.0, 0.0])
    r = CT.certified_radius(e, g, gamma=0.0, eps=1.5)
    assert torch.allclose(r, torch.tensor([1.5, 1.5, 0.0, 0.25, 1.5]))
    r = CT.certified_radius(e, g, gamma=0.0, eps=None)
    assert torch.allclose(r[:4], torch.tensor([2.0, 1.5, 0.0, 0.25])) and torch.isinf(r[4])
    with pytest.raises(ValueError, match="grad_norm"):
        CT.certified_radius(e, g[:-1], 0.0, 1.0)
    with pytest.raises(ValueError, match="grad_norm"):
        CT.certified_radius(e, -g, 0.0, 1.0)
    with pytest.raises(ValueError, match="tpr"):
        CT.threshold_at_tpr(e_id, 0.0)
