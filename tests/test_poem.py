"""POEM: the Bayesian linear posterior against the closed form, the Thompson-sampling selection against a reference
computation, a few trainer steps of poem / poem_grad, and exact resume with the posterior in the checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from greg_ood.run import pipeline
from greg_ood import registry
from greg_ood.run.config import PoemCfg
from greg_ood.poem import Posterior, PoemSelector, blr_posterior, closest_to_boundary, thompson_scores
from greg_ood.run.trainer import Hooks, Job, Sources, Trainer

from test_registry import B, _cfg, _Source, _train

SIGMA, SIGMA_N, T = 20.0, 0.5, 3.0


def _closed_form(z: np.ndarray, y: np.ndarray):
    """Bayesian linear regression with prior N(0, σI) and noise variance σ_n, in NumPy: mean and σ·A⁻¹."""
    a = z.T @ z / SIGMA_N + np.eye(z.shape[1]) / SIGMA
    a_inv = np.linalg.inv(a)
    return a_inv @ z.T @ y / SIGMA_N, SIGMA * a_inv


def _cov(post: Posterior) -> np.ndarray:
    chol = post.chol.numpy()
    return post.scale * np.linalg.inv(chol @ chol.T)


def test_posterior_is_the_closed_form():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(20, 5)), rng.normal(size=20)
    post = blr_posterior(torch.from_numpy(z.T @ z), torch.from_numpy(z.T @ y), SIGMA, SIGMA_N)
    mean, cov = _closed_form(z, y)
    np.testing.assert_allclose(post.mean.numpy(), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_cov(post), cov, rtol=1e-9, atol=1e-12)
    # by hand, one feature: z = [1, 2], y = [3, -1]: A = 5/0.5 + 1/20 = 10.05, mean = (3 - 2)/0.5 / A
    one = blr_posterior(torch.tensor([[5.0]]), torch.tensor([1.0]), SIGMA, SIGMA_N)
    assert one.mean.item() == pytest.approx(2 / 10.05) and _cov(one)[0, 0] == pytest.approx(20 / 10.05)


def test_selector_fits_the_last_epochs_with_signed_targets():
    rng = np.random.default_rng(1)
    sel = PoemSelector(PoemCfg(buffer_epochs=2))
    data = {e: (rng.normal(size=(3, 4)), rng.normal(size=(2, 4))) for e in range(3)}
    for e, (z_out, z_in) in data.items():
        sel.update(e, torch.from_numpy(z_out), torch.from_numpy(z_in))
    # epoch 0 left the buffer; outliers have target +3, ID rows -3
    z = np.concatenate([np.concatenate(data[e]) for e in (1, 2)])
    y = np.concatenate([np.r_[np.full(3, T), np.full(2, -T)]] * 2)
    mean, cov = _closed_form(z, y)
    post = sel.posterior()
    np.testing.assert_allclose(post.mean.numpy(), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_cov(post), cov, rtol=1e-9, atol=1e-12)
    assert sel.slot_epoch == [2, 1]


def test_thompson_selection_equals_the_reference_draw():
    rng = np.random.default_rng(2)
    z_fit, y_fit = rng.normal(size=(30, 6)), rng.choice([-T, T], size=30)
    post = blr_posterior(torch.from_numpy(z_fit.T @ z_fit), torch.from_numpy(z_fit.T @ y_fit), SIGMA, SIGMA_N)
    cand = rng.normal(size=(40, 6))
    idx = closest_to_boundary(thompson_scores(torch.from_numpy(cand), post, torch.Generator().manual_seed(7)), 5)
    # reference in NumPy: the same standard normal draw, w = mean + √σ L⁻ᵀ ε with A = L Lᵀ
    eps = torch.randn(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).numpy()[:, 0]
    mean, _ = _closed_form(z_fit, y_fit)
    w = mean + np.sqrt(SIGMA) * np.linalg.inv(post.chol.numpy()).T @ eps
    assert idx.tolist() == np.argsort(np.abs(cand @ w), kind="stable")[:5].tolist()


def test_a_sharp_posterior_keeps_the_candidates_closest_to_its_boundary():
    w_star = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    sharp = Posterior(w_star, torch.linalg.cholesky(1e12 * torch.eye(3, dtype=torch.float64)), 1.0)
    z = torch.tensor([[3.0, 0, 0], [0.1, 0, 0], [0, 1, 0], [0, 0, -0.4], [1, 0.5, 0.2], [0, 0, 8]])
    # |w*ᵀz| by hand: 3, 0.1, 2, 0.2, |1 - 1 + 0.1| = 0.1, 4: rows 1, 3, 4 are the closest to the boundary
    scores = (z.double() @ w_star).abs()
    assert scores.tolist() == pytest.approx([3.0, 0.1, 2.0, 0.2, 0.1, 4.0])
    for seed in range(5):
        picked = closest_to_boundary(thompson_scores(z, sharp, torch.Generator().manual_seed(seed)), 3)
        assert sorted(picked.tolist()) == [1, 3, 4]
    with pytest.raises(ValueError, match="n_select"):
        closest_to_boundary(scores, 7)


# ------------------------------------------------------------------------------------------------- in the trainer
def test_registry_declares_poem():
    poem, grad = registry.get("poem"), registry.get("poem_grad")
    assert (poem.display, grad.display, grad.adds_penalty_to) == ("POEM", "POEM + grad", "poem")
    assert poem.selects and poem.selection is None and not poem.has_penalty and grad.has_penalty
    assert ("poem", "poem_grad") in registry.penalty_pairs()
    cfg = _cfg()
    assert cfg.train_cfg("mini", "poem").poem == PoemCfg() and cfg.train_cfg("mini", "poem").loss.lambda_grad == 0
    assert cfg.train_cfg("mini", "greg").poem is None and "poem" not in cfg.train_cfg("mini", "greg").model_dump()
    t = cfg.train_cfg("mini", "poem")
    assert pipeline.candidate_batch_size(t, "poem", n_id=36000, n_aux=50000) == 384
    with pytest.raises(ValueError, match="not both"):
        registry.Method("x", "X", ("ce", "energy"), selection=registry.Selection("energy"),
                        selector=poem.selector)


@pytest.mark.parametrize("name,terms", [("poem", {"energy"}), ("poem_grad", {"energy", "grad"})])
def test_poem_trains_through_the_trainer(name, terms):
    tr, rows = _train(name, _cfg())
    x_aux, roles = tr.aux_batch(0, 0, n_id=B, x_id=torch.zeros(B, 1, 28, 28))
    assert x_aux.shape[0] == B and roles is None
    tr.selector.load_state_dict({})  # the probe above must not count
    tr.fit()
    logged = {k for _, r in rows for k in r}
    assert terms <= logged and ({"grad"} & logged) == ({"grad"} & terms) and "oe" not in logged
    st = tr.selector.state_dict()
    assert st["slot_epoch"].tolist() == [0, -1, -1, -1]
    # two steps of B kept outliers and B ID rows went into epoch 0's slot; the other slots are empty
    assert torch.isfinite(st["zz"]).all() and st["zz"][0].trace() > 0 and st["zz"][1:].abs().sum() == 0


def _poem_run(tmp_path, stop_at=None):
    """poem for 2 epochs x 3 steps with a checkpoint every step; ``stop_at``: crash after that global step."""
    cfg = _cfg()
    t = cfg.train_cfg("mini", "poem")
    t = t.model_copy(update={"epochs": 2, "steps_per_epoch": 3, "batch_size": B, "gradnorm_every": 0,
                             "checkpoint_every": 1, "poem": PoemCfg(buffer_epochs=1),
                             "loss": t.loss.model_copy(update={"m_in": -1.9, "m_out": -1.7}),
                             "sampling": t.sampling.model_copy(update={"candidate_batch": 4 * B})})

    def progress(step, total):
        if step == stop_at:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    model = pipeline.build_model(cfg, "mini", "small_cnn", "poem")
    tmp_path.mkdir(exist_ok=True)
    tr = Trainer(model, Job("poem", t, seed=0), Sources(_Source(B, True), _Source(4 * B, False)),
                 device=torch.device("cpu"), hooks=Hooks(progress=progress), ckpt_path=tmp_path / "poem.pt",
                 config_hash="h")
    return tr


def test_resume_with_the_posterior_is_bit_identical(tmp_path):
    full = _poem_run(tmp_path / "a")
    full.fit()
    with pytest.raises(KeyboardInterrupt):
        _poem_run(tmp_path / "b", stop_at=5).fit()  # the checkpoint after global step 4 (epoch 1, step 1) stays
    resumed = _poem_run(tmp_path / "b")
    assert resumed.fit().resumed_from == (1, 1)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    a, b = full.selector.state_dict(), resumed.selector.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and a["slot_epoch"].tolist() == [1]
    # without the posterior in the checkpoint, the resumed run differs (the test can fail)
    lost = _poem_run(tmp_path / "c")
    with pytest.raises(KeyboardInterrupt):
        _poem_run(tmp_path / "c", stop_at=5).fit()
    lost.try_resume = lambda: (lost.selector.load_state_dict({}), Trainer.try_resume(lost))[1]
    lost.selector.load_state_dict = lambda state: None
    lost.fit()
    assert not all(torch.equal(v, lost.model.state_dict()[k]) for k, v in full.model.state_dict().items())
