"""Shapes, parameter counts and the common interface of greg_ood.models."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from greg_ood import models

EXPECTED_PARAMS = {"wrn40_2": 2_243_546, "densenet100": 769_162, "resnet18": 11_173_962}  # K = 10
PAPER_PARAMS = {"wrn40_2": 2.24e6, "densenet100": 0.77e6, "resnet18": 11.17e6}
FEATURE_DIM = {"small_cnn": 96, "wrn40_2": 128, "densenet100": 342, "densenet101": 342, "resnet18": 512,
               "densenet121": 1024}


@pytest.mark.parametrize("name", models.names())
def test_shapes_interface_and_extra_output(name):
    c, s = (1, 28) if name == "small_cnn" else (3, 32)
    m = models.build(name, 10, in_channels=c).eval()
    x = torch.randn(2, c, s, s)
    with torch.no_grad():
        z = m.features(x)
        out = m(x)
        assert torch.allclose(out, m.head(z))
    assert out.shape == (2, 10) and z.shape == (2, m.feature_dim) and m.feature_dim == FEATURE_DIM[name]
    assert bool((z >= 0).all())  # post-ReLU pooled features
    assert m.num_classes == 10 and m.extra_outputs == 0
    m1 = models.build(name, 10, in_channels=c, extra_outputs=1)
    assert m1.num_classes == 10 and m1.extra_outputs == 1
    with torch.no_grad():
        assert m1.eval()(x).shape == (2, 11)


@pytest.mark.parametrize("name", ["wrn40_2", "densenet100", "resnet18"])
def test_parameter_counts_match_the_paper_architectures(name):
    n = models.count_parameters(models.build(name, 10))
    assert n == EXPECTED_PARAMS[name]
    assert abs(n - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.01


def test_small_cnn_size_and_other_inputs():
    m = models.build("small_cnn", 10, in_channels=1)
    assert models.count_parameters(m) <= 150_000
    m3 = models.build("small_cnn", 10, in_channels=3)
    assert m3(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    r = models.build("resnet18", 10, stem="imagenet")
    assert r(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert models.count_parameters(r) == EXPECTED_PARAMS["resnet18"] + 3 * 64 * (49 - 9)
    d = models.build("densenet100", 10)
    assert d.eval()(torch.randn(1, 3, 40, 40)).shape == (1, 10)  # global pooling: not tied to 32x32


def test_double_backward_through_models():
    torch.manual_seed(0)
    for name in ("small_cnn", "wrn40_2", "resnet18"):
        c, s = (1, 28) if name == "small_cnn" else (3, 16)
        m = models.build(name, 10, in_channels=c, **({"depth": 10} if name == "wrn40_2" else {}))
        x = torch.randn(4, c, s, s, requires_grad=True)
        e = -torch.logsumexp(m(x), 1)
        (g,) = torch.autograd.grad(e.sum(), x, create_graph=True)
        g.flatten(1).norm(dim=1).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="name"):
        models.build("vgg16", 10)
    with pytest.raises(ValueError, match="stem"):
        models.build("resnet18", 10, stem="tiny")
    with pytest.raises(ValueError, match="resnet18"):
        models.build("resnet18", 10, widen=3)


def test_no_cuda_calls_in_model_code():
    root = Path(models.__file__).parent
    for f in root.glob("*.py"):
        assert ".cuda(" not in f.read_text()
