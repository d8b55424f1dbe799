"""Known-answer tests of greg_ood.losses (the GReg penalty against the authors' two-forward formulation)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from greg_ood import losses as L
from greg_ood.scores import energy


class ConvBN(nn.Module):
    """Small conv net with BatchNorm (its train-mode batch statistics couple the rows)."""

    def __init__(self, k=5, act=F.relu):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8, k)
        self.act = act

    def forward(self, x):
        h = self.act(self.bn(self.c1(x)))
        h = self.act(self.c2(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _setup(seed=0, n_in=6, n_aux=8, scale=4.0):
    torch.manual_seed(seed)
    m = ConvBN().double()
    with torch.no_grad():
        m.fc.weight.mul_(scale)
    x = torch.randn(n_in + n_aux, 3, 8, 8, dtype=torch.float64)
    is_id = torch.zeros(n_in + n_aux, dtype=torch.bool)
    is_id[:n_in] = True
    return m, x, is_id


def _margins_between(e, is_id):
    """Margins that make part of each group active and part inactive (m_in < m_out)."""
    e_id, e_aux = e[is_id].sort().values, e[~is_id].sort().values
    m_in = float(e_id[len(e_id) // 2 - 1] + e_id[len(e_id) // 2]) / 2
    m_out = float(e_aux[len(e_aux) // 2 - 1] + e_aux[len(e_aux) // 2]) / 2
    if not m_in < m_out:  # shift the aux margin up; keeps at least one active aux row
        m_out = m_in + 1e-3
        assert (e[~is_id] > m_out).any()
    return m_in, m_out


def _official_two_forward(m, x, is_id, m_in, m_out):
    """The authors' formulation (train_sea.py): second forward, jacobian of the hinge closure, row norms, mean."""
    n_in, n_out = int(is_id.sum()), int((~is_id).sum())

    def g(inp):
        e = energy(m(inp))
        return -F.relu(m_in - e[is_id]).sum() / n_in + F.relu(e[~is_id] - m_out).sum() / n_out

    J = torch.autograd.functional.jacobian(g, x, create_graph=True)
    return J.reshape(x.shape[0], -1).norm(dim=1).mean()


def test_official_equals_two_forward_jacobian_with_train_bn():
    m, x, is_id = _setup()
    m.train()
    with torch.no_grad():
        e0 = energy(m(x))
    m_in, m_out = _margins_between(e0, is_id)
    xr = x.clone().requires_grad_(True)
    ours = L.gradient_penalty(xr, energy(m(xr)), is_id, m_in, m_out, reduction="official")
    ref = _official_two_forward(m, x.clone(), is_id, m_in, m_out)
    a_id, a_aux = is_id & (e0 < m_in), ~is_id & (e0 > m_out)
    assert 0 < int(a_id.sum()) < int(is_id.sum()) and 0 < int(a_aux.sum()) < int((~is_id).sum())
    assert float(ref.detach()) > 0
    assert abs(float(ours.detach()) - float(ref.detach())) < 1e-5
    # the penalty trains: its parameter gradients agree with the two-forward version too
    g_ours = torch.autograd.grad(ours, list(m.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(ref, list(m.parameters()), allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        a = torch.zeros(1, dtype=torch.float64) if a is None else a
        b = torch.zeros(1, dtype=torch.float64) if b is None else b
        assert torch.allclose(a, b, atol=1e-8, rtol=1e-5)


def _per_sample_loop(m, x, is_id, m_in, m_out, std=None):
    m.eval()
    tot_in, tot_out = 0.0, 0.0
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        e = energy(m(xi))[0]
        (g,) = torch.autograd.grad(e, xi)
        e = e.detach()
        if std is not None:
            g = g / torch.as_tensor(std, dtype=g.dtype).view(1, -1, 1, 1)
        nrm = float(g.norm())
        if is_id[i] and float(e) < m_in:
            tot_in += nrm
        if not is_id[i] and float(e) > m_out:
            tot_out += nrm
    return tot_in / int(is_id.sum()) + tot_out / int((~is_id).sum())


@pytest.mark.parametrize("grad_space", ["normalized", "pixel"])
def test_per_sample_equals_loop_with_eval_bn(grad_space):
    m, x, is_id = _setup(seed=1)
    m.eval()
    with torch.no_grad():
        e0 = energy(m(x))
    m_in, m_out = _margins_between(e0, is_id)
    std = [0.2, 0.5, 0.25]
    xr = x.clone().requires_grad_(True)
    ours = L.gradient_penalty(xr, energy(m(xr)), is_id, m_in, m_out, reduction="per_sample", grad_space=grad_space,
                              channel_std=std)
    ref = _per_sample_loop(m, x, is_id, m_in, m_out, std=std if grad_space == "pixel" else None)
    assert ref > 0
    assert abs(float(ours.detach()) - ref) < 1e-5


def test_official_is_per_sample_over_n_when_groups_equal():
    # with n_in == n_out the official weights are 1/n on every row, so official = per_sample / N exactly (eval BN)
    m, x, is_id = _setup(seed=2, n_in=7, n_aux=7)
    m.eval()
    with torch.no_grad():
        e0 = energy(m(x))
    m_in, m_out = _margins_between(e0, is_id)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    off = L.gradient_penalty(x1, energy(m(x1)), is_id, m_in, m_out, reduction="official")
    ps = L.gradient_penalty(x2, energy(m(x2)), is_id, m_in, m_out, reduction="per_sample")
    assert abs(float(off.detach()) - float(ps.detach()) / 14) < 1e-12


def test_margin_violating_samples_contribute_exactly_zero():
    m, x, is_id = _setup(seed=3)
    m.eval()
    with torch.no_grad():
        e0 = energy(m(x))
    # every ID row has E >= m_in and every aux row E <= m_out: all violate their margin
    m_in, m_out = float(e0.min()) - 1.0, float(e0.max()) + 1.0
    for red in ("official", "per_sample"):
        xr = x.clone().requires_grad_(True)
        pen, st = L.gradient_penalty(xr, energy(m(xr)), is_id, m_in, m_out, reduction=red, return_stats=True)
        assert float(pen.detach()) == 0.0
        assert float(st.active_frac) == 0.0 and math.isnan(float(st.gradnorm_id))
        grads = torch.autograd.grad(pen, list(m.parameters()), allow_unused=True)
        assert all(g is None or float(g.abs().max()) == 0.0 for g in grads)
    # change only violating rows' inputs: the penalty is unchanged (eval BN: no coupling)
    m_in, m_out = _margins_between(e0, is_id)
    inactive = (is_id & (e0 >= m_in)) | (~is_id & (e0 <= m_out))
    x1 = x.clone().requires_grad_(True)
    p1 = L.gradient_penalty(x1, energy(m(x1)), is_id, m_in, m_out, reduction="per_sample")
    x2 = x.clone()
    x2[inactive] += 1e-3 * torch.randn_like(x2[inactive])
    x2.requires_grad_(True)
    e2 = energy(m(x2))
    assert torch.equal(e2.detach() < m_in, e0 < m_in) and torch.equal(e2.detach() > m_out, e0 > m_out)
    p2 = L.gradient_penalty(x2, e2, is_id, m_in, m_out, reduction="per_sample")
    assert abs(float(p1.detach()) - float(p2.detach())) < 1e-12


def test_stats_are_per_row_gradient_norms():
    m, x, is_id = _setup(seed=4)
    m.eval()
    with torch.no_grad():
        e0 = energy(m(x))
    m_in, m_out = _margins_between(e0, is_id)
    xr = x.clone().requires_grad_(True)
    _, st = L.gradient_penalty(xr, energy(m(xr)), is_id, m_in, m_out, return_stats=True)
    norms = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(m(xi))[0], xi)
        norms.append(float(g.norm()))
    norms = torch.tensor(norms, dtype=torch.float64)
    a_id, a_aux = is_id & (e0 < m_in), ~is_id & (e0 > m_out)
    assert abs(float(st.gradnorm_id) - float(norms[a_id].mean())) < 1e-8
    assert abs(float(st.gradnorm_aux) - float(norms[a_aux].mean())) < 1e-8
    assert abs(float(st.active_frac) - float((a_id | a_aux).double().mean())) < 1e-12


def test_penalty_gradcheck_float64():
    torch.manual_seed(5)
    m = ConvBN(act=F.softplus).double().eval()  # smooth activations: the penalty is differentiable in the weights
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64)
    is_id = torch.tensor([True, True, True, False, False, False])
    with torch.no_grad():
        e0 = energy(m(x))
    m_in, m_out = _margins_between(e0, is_id)
    names = ("c2.bias", "fc.weight", "bn.weight")  # a small subset keeps gradcheck fast
    params = dict(m.named_parameters())

    def f(*ws):
        xr = x.clone().requires_grad_(True)
        out = torch.func.functional_call(m, {**params, **dict(zip(names, ws))}, (xr,))
        return L.gradient_penalty(xr, energy(out), is_id, m_in, m_out, reduction="official")

    ws = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, ws, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_energy_margin_loss_hand_values():
    e_id = torch.tensor([-30.0, -20.0, -25.0])
    e_aux = torch.tensor([-10.0, -5.0, -7.0])
    # ID: relu(E - m_in)^2 = [0, 25, 0] -> 25/3 ; aux: relu(m_out - E)^2 = [9, 0, 0] -> 3
    assert abs(float(L.energy_margin_loss(e_id, e_aux, -25.0, -7.0)) - (25 / 3 + 3)) < 1e-6
    # all inactive: 0 with zero gradient
    a = torch.tensor([-40.0, -26.0], requires_grad=True)
    b = torch.tensor([-1.0, 3.0], requires_grad=True)
    v = L.energy_margin_loss(a, b, -25.0, -7.0)
    v.backward()
    assert float(v.detach()) == 0.0 and float(a.grad.abs().sum()) == 0.0 and float(b.grad.abs().sum()) == 0.0
    # all active: (5^2 + 10^2)/2 + (3^2 + 5^2)/2 = 62.5 + 17 ; gradients 2 (E - m_in)/n_in and -2 (m_out - E)/n_out
    a = torch.tensor([-20.0, -15.0], requires_grad=True)
    b = torch.tensor([-10.0, -12.0], requires_grad=True)
    v = L.energy_margin_loss(a, b, -25.0, -7.0)
    v.backward()
    assert abs(float(v.detach()) - 79.5) < 1e-5
    assert torch.allclose(a.grad, torch.tensor([5.0, 10.0])) and torch.allclose(b.grad, torch.tensor([-3.0, -5.0]))
    # two separate means: group sizes do not reweight the groups
    v2 = L.energy_margin_loss(torch.tensor([-20.0]), torch.tensor([-10.0, -10.0, -10.0, -10.0]), -25.0, -7.0)
    assert abs(float(v2.detach()) - (25 + 9)) < 1e-5


def test_outlier_exposure_and_absent_class_hand_values():
    lg = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    expect = (math.log(2) + (math.log(math.e + math.e ** 3) - 2.0)) / 2
    assert abs(float(L.outlier_exposure_loss(lg)) - expect) < 1e-6
    # CE to the uniform distribution
    assert abs(float(L.outlier_exposure_loss(lg)) - float(-(F.log_softmax(lg, 1)).mean())) < 1e-6
    lg3 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    expect = (math.log(3) + (math.log(2 + math.e ** 2) - 2.0)) / 2
    assert abs(float(L.absent_class_loss(lg3)) - expect) < 1e-6
    assert abs(float(L.cross_entropy(lg3, torch.tensor([2, 2]))) - expect) < 1e-6


def test_bad_inputs_raise_value_error_naming_the_argument():
    m, x, is_id = _setup(seed=6)
    xr = x.clone().requires_grad_(True)
    e = energy(m(xr))

    def call(**kw):
        args = dict(inputs=xr, energy=e, is_id=is_id, m_in=-25.0, m_out=-7.0)
        args.update(kw)
        return L.gradient_penalty(**args)

    with pytest.raises(ValueError, match="energy"):
        call(energy=e[:-1])
    with pytest.raises(ValueError, match="is_id"):
        call(is_id=is_id.long())
    with pytest.raises(ValueError, match="is_id"):
        call(is_id=is_id[:-1])
    with pytest.raises(ValueError, match="is_id"):
        call(is_id=torch.ones_like(is_id))  # empty aux group
    with pytest.raises(ValueError, match="is_id"):
        call(is_id=torch.zeros_like(is_id))  # empty ID group
    with pytest.raises(ValueError, match="energy"):
        call(energy=e * torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="m_in"):
        call(m_in=-7.0, m_out=-7.0)
    with pytest.raises(ValueError, match="inputs"):
        call(inputs=x)
    with pytest.raises(ValueError, match="reduction"):
        call(reduction="sum")
    with pytest.raises(ValueError, match="grad_space"):
        call(grad_space="raw")
    with pytest.raises(ValueError, match="channel_std"):
        call(grad_space="pixel")
    with pytest.raises(ValueError, match="energy_aux"):
        L.energy_margin_loss(torch.zeros(2), torch.zeros(0), -25.0, -7.0)
    with pytest.raises(ValueError, match="energy_id"):
        L.energy_margin_loss(torch.tensor([float("nan")]), torch.zeros(2), -25.0, -7.0)
    with pytest.raises(ValueError, match="m_in"):
        L.energy_margin_loss(torch.zeros(2), torch.zeros(2), 0.0, -1.0)
    with pytest.raises(ValueError, match="logits_aux"):
        L.absent_class_loss(torch.zeros(2, 1))


def test_margin_stats_known_answers():
    """Indicator shares (strict, as the penalty's) and linearly interpolated percentiles, computed by hand."""
    e_id = torch.tensor([-3.0, -2.0, -1.0, 0.0])
    e_aux = torch.tensor([4.0, 0.0, 2.5, 1.0, 3.0])  # unsorted on purpose
    st = L.margin_stats(e_id, e_aux, m_in=-2.0, m_out=2.5)
    # ID: only -3 is strictly below m_in = -2 (the tie -2 is not); aux: 4 and 3 are strictly above 2.5
    want = {"active_frac_id": 0.25, "active_frac_aux": 0.4,
            # positions q * (n - 1): ID 0.15, 1.5, 2.85 -> -2.85, -1.5, -0.15; aux (sorted 0, 1, 2.5, 3, 4) 0.2, 2, 3.8
            "energy_id_p5": -2.85, "energy_id_p50": -1.5, "energy_id_p95": -0.15,
            "energy_aux_p5": 0.2, "energy_aux_p50": 2.5, "energy_aux_p95": 3.8}
    assert set(st) == set(want)
    for k, v in want.items():
        assert st[k].dim() == 0 and abs(float(st[k]) - v) < 1e-6, (k, float(st[k]), v)
    # the shares are the penalty's own indicators: rows active in gradient_penalty <=> counted here
    x = torch.cat([e_id, e_aux]).view(9, 1).requires_grad_(True)  # energy = the input itself
    _, ps = L.gradient_penalty(x, x[:, 0] * 1.0, torch.arange(9) < 4, -2.0, 2.5, return_stats=True)
    assert float(ps.n_active_id) == 1 and float(ps.n_active_aux) == 2
    with pytest.raises(ValueError, match="energy_aux"):
        L.margin_stats(e_id, torch.zeros(0), -2.0, 2.5)
