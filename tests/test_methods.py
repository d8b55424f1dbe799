"""Training steps of every method and the auxiliary selection (greg_ood.methods)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from greg_ood import losses as L
from greg_ood import methods as M
from greg_ood import models, registry
from greg_ood.scores import energy

# reference values below are computed from tensors that carry the autograd graph (on purpose: the same forward)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")


def _batch(seed=0, n_id=8, n_aux=8, K=4):
    g = torch.Generator().manual_seed(seed)
    x_id = torch.randn(n_id, 1, 14, 14, generator=g)
    y_id = torch.randint(0, K, (n_id,), generator=g)
    x_aux = torch.randn(n_aux, 1, 14, 14, generator=g) * 2 + 1
    return x_id, y_id, x_aux


def _model(K=4, extra=0, seed=0):
    torch.manual_seed(seed)
    return models.build("small_cnn", K, in_channels=1, extra_outputs=extra, widths=(8, 8, 16)).train()


@pytest.mark.parametrize("name", registry.METHODS)
def test_every_method_returns_finite_loss_and_logs(name):
    m = _model(extra=1 if name == "dos" else 0)
    x_id, y_id, x_aux = _batch()
    p = M.MethodLoss.of(name, m_in=-3.0, m_out=-1.0)
    loss, logs = M.training_step(m, x_id, y_id, x_aux, p)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(q.grad).all() for q in m.parameters() if q.grad is not None)
    assert {"ce", "total"} <= set(logs)
    assert all(not v.requires_grad for v in logs.values())
    if name in ("greg", "greg_plus", "oe_grad"):
        assert {"grad", "active_frac", "gradnorm_id", "gradnorm_aux"} <= set(logs)
    if name in ("energy", "greg", "greg_plus"):
        assert "energy" in logs
    assert set(registry.get(name).terms) <= set(logs)


def test_single_forward_and_loss_composition():
    m = _model()
    calls = []
    m.register_forward_hook(lambda *a: calls.append(1))
    x_id, y_id, x_aux = _batch(1)
    p = M.MethodLoss.of("greg", m_in=-3.0, m_out=-1.0, lambda_energy=0.1, lambda_grad=1.0)
    loss, logs = M.training_step(m, x_id, y_id, x_aux, p)
    assert len(calls) == 1
    total = logs["ce"] + 0.1 * logs["energy"] + 1.0 * logs["grad"]
    assert abs(float(loss.detach()) - float(total)) < 1e-5
    # recompute the components from one forward of the same batch (train-mode BN: same batch statistics)
    x = torch.cat([x_id, x_aux]).requires_grad_(True)
    lg = m(x)
    e = energy(lg)
    assert abs(float(logs["ce"]) - float(L.cross_entropy(lg[:8], y_id))) < 1e-5
    assert abs(float(logs["energy"]) - float(L.energy_margin_loss(e[:8], e[8:], -3.0, -1.0))) < 1e-5
    is_id = torch.arange(16) < 8
    assert abs(float(logs["grad"]) - float(L.gradient_penalty(x, e, is_id, -3.0, -1.0))) < 1e-5


def test_lambda_grad_zero_skips_the_penalty(monkeypatch):
    m = _model()
    x_id, y_id, x_aux = _batch(2)
    calls = {"grad": 0}
    real = torch.autograd.grad

    def counting(*a, **k):
        calls["grad"] += 1
        return real(*a, **k)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    monkeypatch.setattr(L, "gradient_penalty", lambda *a, **k: pytest.fail("penalty computed with lambda_grad=0"))
    for name in ("greg", "greg_plus", "oe_grad", "energy"):
        loss, logs = M.training_step(m, x_id, y_id, x_aux, M.MethodLoss.of(name, lambda_grad=0.0))
        assert "grad" not in logs and torch.isfinite(loss)
    assert calls["grad"] == 0


class _Ident(nn.Module):
    """'Model' whose logits are its input (flattened), times a learnable scalar = 1."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.s * x.flatten(1)


def test_oe_loss_hand_checked():
    x_id = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]).view(2, 1, 1, 3)
    y_id = torch.tensor([2, 0])
    x_aux = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]).view(2, 1, 1, 3)
    loss, logs = M.training_step(_Ident(), x_id, y_id, x_aux, M.MethodLoss.of("oe", lambda_oe=0.5))

    def lse(v):
        return math.log(sum(math.exp(a) for a in v))

    ce = ((lse([0, 1, 2]) - 2) + (lse([3, 0, 0]) - 3)) / 2
    oe = ((lse([0, 0, 0]) - 0) + (lse([1, 2, 3]) - 2)) / 2
    assert abs(float(logs["ce"]) - ce) < 1e-6 and abs(float(logs["oe"]) - oe) < 1e-6
    assert abs(float(loss) - (ce + 0.5 * oe)) < 1e-6


def test_dos_uses_k_plus_one_outputs():
    m = _model(extra=1)
    x_id, y_id, x_aux = _batch(3)
    loss, logs = M.training_step(m, x_id, y_id, x_aux, M.MethodLoss.of("dos", lambda_abs=1.0))
    with torch.no_grad():
        lg = m(torch.cat([x_id, x_aux]))
    assert lg.shape[1] == 5
    assert abs(float(logs["abs"]) - float(L.absent_class_loss(lg[8:]))) < 1e-5
    assert abs(float(logs["ce"]) - float(L.cross_entropy(lg[:8], y_id))) < 1e-5
    with pytest.raises(ValueError, match="model"):
        M.training_step(_model(), x_id, y_id, x_aux, M.MethodLoss.of("dos"))


def test_split_routing_uses_roles():
    m = _model()
    x_id, y_id, x_aux = _batch(4, n_aux=6)
    roles = torch.tensor([1, 1, 2, 2, 0, 0])
    p = M.MethodLoss.of("greg_plus", routing="split", m_in=-3.0, m_out=-1.0)
    loss, logs = M.training_step(m, x_id, y_id, x_aux, p, aux_roles=roles)
    x = torch.cat([x_id, x_aux]).requires_grad_(True)
    e = energy(m(x))
    ls = L.energy_margin_loss(e[:8], e[8:][roles != 2], -3.0, -1.0)
    assert abs(float(logs["energy"]) - float(ls)) < 1e-5
    rows = torch.cat([torch.ones(8, dtype=torch.bool), roles != 1])
    pen = L.gradient_penalty(x, e, torch.arange(14) < 8, -3.0, -1.0, rows=rows)
    assert abs(float(logs["grad"]) - float(pen)) < 1e-5
    # joint routing ignores the roles
    _, lj = M.training_step(m, x_id, y_id, x_aux, M.MethodLoss.of("greg_plus", m_in=-3.0, m_out=-1.0),
                            aux_roles=roles)
    assert abs(float(lj["energy"]) - float(L.energy_margin_loss(e[:8], e[8:], -3.0, -1.0))) < 1e-5


def test_greg_reduces_the_penalty_term_relative_to_energy():
    x_id, y_id, x_aux = _batch(5, n_id=16, n_aux=16)
    is_id = torch.arange(32) < 16

    def penalty(m):  # the GReg term on the fixed toy batch (train-mode BN, per-sample form)
        x = torch.cat([x_id, x_aux]).requires_grad_(True)
        return float(L.gradient_penalty(x, energy(m(x)), is_id, 0.0, 0.5, reduction="per_sample").detach())

    res = {}
    for name in ("energy", "greg"):
        m = _model(seed=1)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        # margins around the toy model's energies (about -1.3): ID rows active, aux rows pushed up by L_S
        p = M.MethodLoss.of(name, m_in=0.0, m_out=0.5, lambda_grad=5.0, reduction="per_sample")
        start = penalty(m)
        for _ in range(10):
            loss, _ = M.training_step(m, x_id, y_id, x_aux, p)
            opt.zero_grad()
            loss.backward()
            opt.step()
        res[name] = penalty(m)
    assert res["greg"] < 0.5 * res["energy"] and res["greg"] < start, res


def test_per_sample_lambda_is_official_lambda_over_n():
    x_id, y_id, x_aux = _batch(6, n_id=8, n_aux=8)
    m = _model(seed=2)
    _, a = M.training_step(m, x_id, y_id, x_aux, M.MethodLoss.of("greg", m_in=0.0, m_out=0.5, lambda_grad=16.0))
    _, b = M.training_step(m, x_id, y_id, x_aux, M.MethodLoss.of("greg", m_in=0.0, m_out=0.5, lambda_grad=1.0,
                                                                 reduction="per_sample"))
    # n_in == n_out: per-row weights equal, so lambda_off * official == lambda_ps * per_sample with lambda_ps = 16 / N
    assert abs(16.0 * float(a["grad"]) - float(b["grad"])) < 1e-5 * max(1.0, float(b["grad"]))


def test_select_auxiliary_modes_sizes_and_roles():
    m = _model()
    cands = torch.randn(48, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    idx, roles = M.select_auxiliary(m, cands, 8, n_clusters=8, generator=torch.Generator().manual_seed(0),
                                    return_roles=True)
    assert m.training  # previous mode restored
    assert idx.numel() == 16 and idx.unique().numel() == 16 and roles.shape == (16,)
    idx2 = M.select_auxiliary(m, cands, 8, n_clusters=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, idx2)
    m.eval()
    idx3 = M.select_auxiliary(_model(extra=1), cands, 8, n_clusters=8, two_way=False, start=4, score="absent",
                              generator=torch.Generator().manual_seed(0))
    assert idx3.numel() == 8
    assert not m.training
    with pytest.raises(ValueError, match="score"):
        M.select_auxiliary(m, cands, 8, score="msp")


def test_method_loss_validation():
    with pytest.raises(ValueError, match="unknown method 'openmix'"):
        M.MethodLoss.of("openmix")
    with pytest.raises(ValueError, match="m_in"):
        M.MethodLoss.of("greg", m_in=-5.0, m_out=-7.0)
    with pytest.raises(ValueError, match="routing"):
        M.MethodLoss.of("greg", routing="both")
    with pytest.raises(ValueError, match="channel_std"):
        M.MethodLoss.of("greg", grad_space="pixel")
    with pytest.raises(ValueError, match="lambda_grad"):
        M.MethodLoss.of("greg", lambda_grad=-1.0)
    m = _model()
    x_id, y_id, x_aux = _batch()
    with pytest.raises(ValueError, match="x_aux"):
        M.training_step(m, x_id, y_id, None, M.MethodLoss.of("greg"))
    with pytest.raises(ValueError, match="y_id"):
        M.training_step(m, x_id, y_id[:-1], x_aux, M.MethodLoss.of("greg"))
    loss, logs = M.training_step(m, x_id, y_id, None, M.MethodLoss.of("ce"))
    assert set(logs) == {"ce", "total"}


@pytest.mark.parametrize("name", ["oe", "greg", "dos"])
def test_diagnostics_describe_the_step_and_change_nothing(name):
    """diagnostics=True adds the margin shares and energy percentiles of this step's own forward (E over all
    outputs, also for methods without E in their loss) and leaves the loss and its gradients bit for bit alone."""
    extra = registry.get(name).extra_outputs
    x_id, y_id, x_aux = _batch(7)
    with torch.no_grad():
        e = energy(_model(extra=extra)(torch.cat([x_id, x_aux])))  # same weights, same batch statistics
    m_in = float(e[:8].median())  # half the ID rows inside the indicator
    m_out = m_in + 0.01
    p = M.MethodLoss.of(name, m_in=m_in, m_out=m_out)
    runs = []
    for diag in (False, True):
        m = _model(extra=extra)
        loss, logs = M.training_step(m, x_id, y_id, x_aux, p, diagnostics=diag)
        loss.backward()
        runs.append((loss.detach(), [q.grad.clone() for q in m.parameters()], logs))
    (l0, g0, logs0), (l1, g1, logs1) = runs
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert "active_frac_id" not in logs0
    want = L.margin_stats(e[:8], e[8:], m_in, m_out)
    assert float(want["active_frac_id"]) == 0.375  # strictly below the median of 8: 3 rows
    for k, v in want.items():
        assert abs(float(logs1[k]) - float(v)) < 1e-5, k
        assert not logs1[k].requires_grad
