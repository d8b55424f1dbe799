"""Known-answer tests of greg_ood.sampling: torch k-means vs scikit-learn, and the GReg+ cluster selection rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from greg_ood import sampling as S


def _clustered(n=384, d=342, centers=48, seed=0):
    """Post-ReLU-like clustered features (non-negative, sparse-ish), like penultimate activations."""
    rng = np.random.RandomState(seed)
    c = np.maximum(rng.randn(centers, d), 0) * 2.0
    lab = rng.randint(0, centers, n)
    x = np.maximum(c[lab] + 0.6 * rng.randn(n, d), 0)
    return torch.from_numpy(x.astype(np.float32))


def test_kmeans_inertia_within_2_percent_of_sklearn():
    from sklearn.cluster import KMeans

    for seed in (0, 1):
        x = S.normalize_features(_clustered(seed=seed), "norm")
        ref = KMeans(n_clusters=64, n_init=3, random_state=seed).fit(x.numpy()).inertia_
        labels, centers, inertia = S.kmeans(x, 64, n_init=3, generator=torch.Generator().manual_seed(seed))
        assert labels.shape == (384,) and centers.shape == (64, 342)
        assert float(inertia) <= 1.02 * ref
        # inertia is consistent with the returned labels and centres
        d = ((x - centers[labels]) ** 2).sum()
        assert abs(float(d) - float(inertia)) <= 1e-3 * float(inertia)
        # labels are nearest-centre assignments
        assert torch.equal(torch.cdist(x, centers).argmin(1), labels)


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g) for c in centres])
    lab, cen, _ = S.kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    for b in range(3):
        assert lab[b * 30:(b + 1) * 30].unique().numel() == 1
    lab2, cen2, in2 = S.kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(lab, lab2) and torch.equal(cen, cen2)
    with pytest.raises(ValueError, match="k"):
        S.kmeans(x, 91)


def _select_with_labels(e, f, n_clusters, n_select, seed, **kw):
    """Selection plus the cluster labels it used (recomputed with the same generator seed)."""
    idx, roles = S.energy_cluster_select(e, f, n_clusters, n_select, generator=torch.Generator().manual_seed(seed),
                                         return_roles=True, **kw)
    start, stop = kw.get("start", 0), kw.get("stop", None)
    prox = torch.argsort(e, stable=True)[start:stop]
    rep = S.normalize_features(f, kw.get("normalization", "norm"))[prox]
    k = min(n_clusters, n_select, prox.numel())
    labels, _, _ = S.kmeans(rep, k, n_init=kw.get("n_init", 3), generator=torch.Generator().manual_seed(seed))
    lab_of = torch.full((e.numel(),), -1, dtype=torch.long)
    lab_of[prox] = labels
    return idx, roles, lab_of, k


@pytest.mark.parametrize("n_clusters,n_select", [(64, 64), (8, 32)])
def test_two_way_picks_are_cluster_argmin_and_argmax(n_clusters, n_select):
    torch.manual_seed(0)
    f = _clustered(n=384, d=64, centers=40, seed=3)
    e = torch.randn(384) * 3 - 10
    idx, roles, lab_of, k = _select_with_labels(e, f, n_clusters, n_select, seed=7, two_way=True)
    assert idx.numel() == 2 * n_select and idx.unique().numel() == idx.numel()
    assert roles.shape == idx.shape
    q = 1 if k > n_select else n_select // k
    chosen = set(idx.tolist())
    role_of = dict(zip(idx.tolist(), roles.tolist()))
    for c in range(k):
        members = torch.nonzero(lab_of == c).flatten()
        if members.numel() == 0:
            continue
        order = members[torch.argsort(e[members], stable=True)]
        lows, highs = order[:q].tolist(), order[-q:].tolist()
        assert set(lows) <= chosen and set(highs) <= chosen  # q lowest and q highest of every cluster
        for i in lows:
            assert role_of[i] == (S.ROLE_BOTH if i in highs else S.ROLE_LOW)
        for i in highs:
            assert role_of[i] == (S.ROLE_BOTH if i in lows else S.ROLE_HIGH)
    # the argmin of each cluster is in (energy argmin per cluster)
    per_cluster_min = {int(lab_of[i]): i for i in torch.argsort(e, descending=True).tolist() if lab_of[i] >= 0}
    assert set(per_cluster_min.values()) <= chosen


def test_one_way_picks_lowest_and_tops_up_without_duplicates():
    f = _clustered(n=192, d=32, centers=20, seed=4)
    e = torch.linspace(-20, 0, 192)[torch.randperm(192, generator=torch.Generator().manual_seed(0))]
    idx, roles, lab_of, k = _select_with_labels(e, f, 32, 32, seed=2, two_way=False)
    assert idx.numel() == 32 and idx.unique().numel() == 32
    assert bool((roles == S.ROLE_BOTH).all())
    chosen = set(idx.tolist())
    for c in range(k):
        members = torch.nonzero(lab_of == c).flatten()
        if members.numel():
            assert int(members[e[members].argmin()]) in chosen


def test_window_start_stop_and_sizes():
    f = _clustered(n=384, d=32, centers=30, seed=5)
    e = torch.randn(384, generator=torch.Generator().manual_seed(1))
    order = torch.argsort(e, stable=True)
    idx = S.energy_cluster_select(e, f, 64, 64, two_way=False, start=16, generator=torch.Generator().manual_seed(0))
    assert idx.numel() == 64 and not set(idx.tolist()) & set(order[:16].tolist())
    idx = S.energy_cluster_select(e, f, 16, 16, two_way=True, start=0, stop=100,
                                  generator=torch.Generator().manual_seed(0))
    assert idx.numel() == 32 and set(idx.tolist()) <= set(order[:100].tolist())
    # a window smaller than the target returns all of it
    idx = S.energy_cluster_select(e, f, 64, 64, two_way=True, start=0, stop=50,
                                  generator=torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == sorted(order[:50].tolist())
    for norm in S.NORMALIZATIONS:
        idx = S.energy_cluster_select(e, f, 8, 8, normalization=norm, generator=torch.Generator().manual_seed(0))
        assert idx.numel() == 16


def test_same_seed_same_selection():
    f = _clustered(n=384, d=48, centers=40, seed=6)
    e = torch.randn(384, generator=torch.Generator().manual_seed(2))
    a = S.energy_cluster_select(e, f, 64, 64, generator=torch.Generator().manual_seed(11))
    b = S.energy_cluster_select(e, f, 64, 64, generator=torch.Generator().manual_seed(11))
    c = S.energy_cluster_select(e, f, 64, 64, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_select_and_bad_inputs():
    a = S.random_select(100, 10, torch.Generator().manual_seed(0))
    b = S.random_select(100, 10, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.unique().numel() == 10 and int(a.max()) < 100
    f = torch.randn(20, 4)
    e = torch.randn(20)
    with pytest.raises(ValueError, match="normalization"):
        S.energy_cluster_select(e, f, 4, 4, normalization="pca")
    with pytest.raises(ValueError, match="features"):
        S.energy_cluster_select(e, f[:-1], 4, 4)
    with pytest.raises(ValueError, match="energy"):
        S.energy_cluster_select(e * float("nan"), f, 4, 4)
    with pytest.raises(ValueError, match="start"):
        S.energy_cluster_select(e, f, 4, 4, start=20)
    with pytest.raises(ValueError, match="n_select"):
        S.random_select(5, 6)
