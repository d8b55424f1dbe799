"""Auxiliary-outlier selection: GReg+'s energy-based cluster sampling (docs/method.md §3), random selection, and a
device-resident batched k-means that replaces the official code's per-step host round trip to scikit-learn.

All randomness comes from an explicit ``torch.Generator`` (seeded by the caller from the run seed and the step),
never from global RNG state, so selections are reproducible.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["kmeans", "normalize_features", "cluster_features", "energy_cluster_select", "random_select",
           "NORMALIZATIONS", "ROLE_BOTH", "ROLE_LOW", "ROLE_HIGH"]

NORMALIZATIONS = ("norm", "normBatch", "normFeature", "latent")
#: roles of selected rows (``return_roles=True``): 0 = both losses (top-up, or a member that is both its cluster's
#: lowest and highest), 1 = low-energy pick (for L_S), 2 = high-energy pick (for the gradient penalty)
ROLE_BOTH, ROLE_LOW, ROLE_HIGH = 0, 1, 2


# ------------------------------------------------------------------------------------------------------ RNG helpers
def _rand(shape, generator: Optional[torch.Generator], device, dtype=torch.float32) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def _randint(high: int, shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(high, shape, generator=generator, device=gdev).to(device)


def _randperm(n: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=gdev).to(device)


# ------------------------------------------------------------------------------------------------------------ k-means
def _assign(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor, chunk: int):
    """Nearest centre and its squared distance for every row and restart: x [n, d], centres c [R, k, d] ->
    (min squared distance [R, n], label [R, n]). One GEMM against all R*k centres, chunked over rows for large n."""
    R, k, d = c.shape
    cf = c.reshape(R * k, d)
    c_sq = cf.pow(2).sum(1)
    vals, idxs = [], []
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        dist = torch.addmm(c_sq.unsqueeze(0), xs, cf.T, alpha=-2.0).add_(x_sq[s:s + chunk].unsqueeze(1))
        v, i = dist.view(xs.shape[0], R, k).min(dim=2)
        vals.append(v)
        idxs.append(i)
    v = vals[0] if len(vals) == 1 else torch.cat(vals)
    i = idxs[0] if len(idxs) == 1 else torch.cat(idxs)
    return v.clamp_min_(0).T, i.T


def _kmeanspp(x: torch.Tensor, x_sq: torch.Tensor, k: int, R: int, generator, n_local_trials: Optional[int],
              full_matrix_max: int = 8192):
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant): R independent inits at once.
    Each new centre is the best of ``2 + floor(ln k)`` candidates drawn proportionally to D(x)^2 (the candidate that
    most reduces the potential sum_i min_c ||x_i - c||^2 wins). For n <= ``full_matrix_max`` the pairwise distance
    matrix is computed once and candidate distances are row look-ups."""
    n, d = x.shape
    L = n_local_trials if n_local_trials is not None else 2 + int(math.log(k))
    first = _randint(n, (R,), generator, x.device)
    u = _rand((max(k - 1, 0), R, L), generator, x.device, x.dtype)  # all draws up front: no per-step RNG calls
    D = None
    if n <= full_matrix_max:
        D = (x_sq.view(-1, 1) - 2 * x @ x.T + x_sq.view(1, -1)).clamp_min_(0)  # [n, n]
        closest = D[first]  # [R, n]
    else:
        c0 = x[first]
        closest = (x_sq.view(1, -1) - 2 * c0 @ x.T + c0.pow(2).sum(1, keepdim=True)).clamp_min_(0)
    chosen = [first]
    base = torch.arange(R, device=x.device) * L
    for c in range(1, k):
        cs = torch.cumsum(closest, dim=1)
        # draws proportional to D(x)^2; scaling by the last cumsum entry keeps every index <= n - 1 without clamping
        cand = torch.searchsorted(cs, u[c - 1] * cs[:, -1:])  # [R, L]
        if D is not None:
            dc = D.index_select(0, cand.view(-1)).view(R, L, n)
        else:
            xc = x[cand]
            dc = (x_sq.view(1, 1, -1) - 2 * xc @ x.T + xc.pow(2).sum(-1, keepdim=True)).clamp_min_(0)
        new = torch.minimum(closest.unsqueeze(1), dc)  # [R, L, n]
        fi = new.sum(-1).argmin(dim=1) + base  # best candidate per restart (flat index)
        closest = new.view(R * L, n).index_select(0, fi)
        chosen.append(cand.view(-1).index_select(0, fi))
    return x[torch.stack(chosen, dim=1)]  # [R, k, d]


def kmeans(x: torch.Tensor, k: int, *, n_init: int = 3, max_iter: int = 300, tol: float = 1e-4,
           generator: Optional[torch.Generator] = None, check_every: Optional[int] = None,
           n_local_trials: Optional[int] = None, chunk: Optional[int] = None):
    """k-means on ``x`` [n, d] on its own device, mirroring scikit-learn ``KMeans(n_clusters=k, n_init=n_init)``:

    * greedy k-means++ initialisation with ``2 + floor(ln k)`` local trials per centre;
    * Lloyd iterations: assign every row to its nearest centre, move each centre to the mean of its rows
      (a centre whose cluster empties stays where it is; scikit-learn relocates it to a far point instead);
    * stop when ``sum_c ||c_new - c_old||^2 <= tol * mean_j Var(x[:, j])`` (scikit-learn's scaled tolerance) or when
      the assignment no longer changes, at most ``max_iter`` iterations;
    * inertia = ``sum_i min_c ||x_i - c||^2`` with labels recomputed from the final centres;
    * the restart with the lowest inertia is returned.

    All ``n_init`` restarts run **batched** in the same tensor ops (finished restarts are frozen); the only host
    synchronisation is a convergence check every ``check_every`` iterations (default 1 on CPU, 4 on accelerators). Distances are computed in row chunks
    of ``chunk`` rows (default: about 2^24 distances per chunk), so large pools fit in memory.

    Returns ``(labels [n] long, centers [k, d], inertia 0-dim tensor)``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x: expected a non-empty [n, d] tensor, got {getattr(x, 'shape', type(x))}")
    n = x.shape[0]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k: must be an int in [1, n={n}], got {k!r}")
    if not isinstance(n_init, int) or n_init < 1:
        raise ValueError(f"n_init: must be an int >= 1, got {n_init!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter: must be >= 1, got {max_iter}")
    x = x.detach()
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    x_sq = x.pow(2).sum(1)
    tol_abs = float(tol) * float(x.var(dim=0, unbiased=False).mean()) if tol > 0 else 0.0
    R = n_init
    chunk = int(chunk) if chunk else max(1024, (1 << 24) // (R * k))
    centers = _kmeanspp(x, x_sq, k, R, generator, n_local_trials)
    labels = torch.full((R, n), -1, dtype=torch.long, device=x.device)
    done = torch.zeros(R, dtype=torch.bool, device=x.device)
    offs = (torch.arange(R, device=x.device) * k).view(R, 1)
    x_rep = x.repeat(R, 1)  # [R*n, d] rows for the per-restart centre sums
    ones = torch.ones(R * n, dtype=x.dtype, device=x.device)
    if check_every is None:
        check_every = 1 if x.device.type == "cpu" else 4  # a check is a host synchronisation on accelerators
    for it in range(max_iter):
        _, new_labels = _assign(x, x_sq, centers, chunk)
        flat = (new_labels + offs).reshape(-1)
        counts = torch.zeros(R * k, dtype=x.dtype, device=x.device).index_add_(0, flat, ones).view(R, k, 1)
        sums = torch.zeros(R * k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, flat, x_rep)
        new_centers = torch.where(counts > 0, sums.view(R, k, -1) / counts.clamp_min(1), centers)
        shift = (new_centers - centers).pow(2).sum(dim=(1, 2))
        same = (new_labels == labels).all(dim=1)
        centers = torch.where(done.view(R, 1, 1), centers, new_centers)
        labels = torch.where(done.view(R, 1), labels, new_labels)
        done = done | same | (shift <= tol_abs)
        if (it + 1) % check_every == 0 and bool(done.all()):
            break
    dist, labels = _assign(x, x_sq, centers, chunk)
    inertia = dist.sum(dim=1)  # [R]
    best = int(inertia.argmin())
    return labels[best], centers[best], inertia[best]


# ---------------------------------------------------------------------------------------------- feature normalisation
def normalize_features(features: torch.Tensor, normalization: str = "norm") -> torch.Tensor:
    """Representation used for clustering (GReg ``--repr``, docs/method.md §3.2 step 5), computed on the whole batch:

    * ``norm``: per-sample L2 normalisation ``h_i / ||h_i||`` (the paper's h_N; default);
    * ``normBatch``: ``h_i / mean_j ||h_j||`` (one scalar for the batch);
    * ``normFeature``: each feature dimension scaled to unit L2 norm over the batch;
    * ``latent``: raw features.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: must be one of {NORMALIZATIONS}, got {normalization!r}")
    f = features.detach()
    if not f.is_floating_point() or f.dtype in (torch.float16, torch.bfloat16):
        f = f.float()
    if normalization == "norm":
        return F.normalize(f, dim=1)
    if normalization == "normBatch":
        return f / torch.linalg.vector_norm(f, dim=1).mean().clamp_min(1e-12)
    if normalization == "normFeature":
        return F.normalize(f, dim=0)
    return f


def cluster_features(features: torch.Tensor, k: int, *, normalization: str = "norm", n_init: int = 3,
                     generator: Optional[torch.Generator] = None, **kmeans_kw) -> torch.Tensor:
    """Cluster labels [n] of ``normalize_features(features, normalization)`` with :func:`kmeans` (k clusters)."""
    f = _check_features(features, None)
    labels, _, _ = kmeans(normalize_features(f, normalization), int(k), n_init=n_init, generator=generator,
                          **kmeans_kw)
    return labels


def _check_features(features, n: Optional[int]) -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        features = torch.as_tensor(features)
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features: expected a non-empty [n, d] tensor, got shape {tuple(features.shape)}")
    if n is not None and features.shape[0] != n:
        raise ValueError(f"features: has {features.shape[0]} rows but energy has {n}")
    return features


# ------------------------------------------------------------------------------------------------------- selection
def energy_cluster_select(energy: torch.Tensor, features: torch.Tensor, n_clusters: int, n_select: int, *,
                          two_way: bool = True, start: int = 0, stop: Optional[int] = None,
                          normalization: str = "norm", n_init: int = 3, generator: Optional[torch.Generator] = None,
                          return_roles: bool = False, **kmeans_kw):
    """GReg+ energy-based cluster sampling of one candidate batch (paper Algorithm 1; official
    ``clusterAndChooseSamples``, docs/method.md §3.2). ``energy``: score per candidate, low = ID-like (E; or the
    absent-class probability for DOS); ``features``: penultimate features [C, d]. Returns indices into the candidate
    batch.

    1. Sort candidates by score, ascending; keep ranks ``[start:stop]`` (the "proximal" set; GReg+: all, DOS: 16:).
    2. Represent them by ``normalize_features(features, normalization)`` (computed over the whole candidate batch).
    3. k = min(n_clusters, n_select, |proximal|); k-means (k-means++ init, ``n_init`` restarts, best inertia).
    4. Quota q = 1 if k > n_select else floor(n_select / k). Per cluster: all members if it has <= q, else its q
       lowest-score members and, with ``two_way``, also its q highest (union, no duplicates).
    5. Top up at random (``generator``) from the unpicked proximal candidates to n_select x (2 if two_way else 1);
       when the proximal set is smaller than that, all of it is returned.

    Order of the result: cluster picks in ascending score, then the top-up. With ``return_roles=True`` also returns an
    int64 tensor of roles (two-way only; one-way selections are all ``ROLE_BOTH``): ``ROLE_LOW`` (1) = a cluster's
    lowest (for L_S), ``ROLE_HIGH`` (2) = a cluster's highest (for the gradient penalty), ``ROLE_BOTH`` (0) = top-up,
    or a member that is both lowest and highest (a cluster with <= q members). The official code routes every pick
    into both losses ("joint"); roles serve the paper's split routing.
    """
    if not isinstance(energy, torch.Tensor) or energy.dim() != 1 or energy.numel() == 0:
        raise ValueError(f"energy: expected a non-empty 1-D tensor, got {getattr(energy, 'shape', type(energy))}")
    C = energy.shape[0]
    features = _check_features(features, C)
    if not isinstance(n_select, int) or n_select < 1:
        raise ValueError(f"n_select: must be an int >= 1, got {n_select!r}")
    if not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"n_clusters: must be an int >= 1, got {n_clusters!r}")
    if not isinstance(start, int) or start < 0 or start >= C:
        raise ValueError(f"start: must be an int in [0, {C}), got {start!r}")
    if stop is not None and (not isinstance(stop, int) or stop <= start):
        raise ValueError(f"stop: must be None or an int > start={start}, got {stop!r}")
    e = energy.detach()
    if not bool(torch.isfinite(e).all()):
        raise ValueError("energy: contains NaN or inf")
    dev = e.device
    order = torch.argsort(e, stable=True)
    prox = order[start:stop]  # candidate indices of the proximal set, ascending score
    P = prox.numel()
    rep = normalize_features(features.to(dev), normalization)[prox]
    k = min(n_clusters, n_select, P)
    labels, _, _ = kmeans(rep, k, n_init=n_init, generator=generator, **kmeans_kw)
    q = 1 if k > n_select else n_select // k
    # rank of each proximal member inside its cluster (prox is sorted by score, so position order = score order)
    perm = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=k)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(labels)
    rank[perm] = torch.arange(P, device=dev) - starts[labels[perm]]
    low = rank < q
    high = (counts[labels] - 1 - rank) < q if two_way else torch.zeros_like(low)
    picked = low | high
    target = n_select * (2 if two_way else 1)
    pos = torch.nonzero(picked).flatten()  # positions in prox, ascending score
    n_fill = max(0, min(target, P) - pos.numel())
    if n_fill:
        rest = torch.nonzero(~picked).flatten()
        fill = rest[_randperm(rest.numel(), generator, dev)[:n_fill]]
        pos = torch.cat([pos, fill])
    idx = prox[pos]
    if not return_roles:
        return idx
    roles = torch.full((pos.numel(),), ROLE_BOTH, dtype=torch.long, device=dev)
    if two_way:
        n_pick = pos.numel() - n_fill
        lo, hi = low[pos[:n_pick]], high[pos[:n_pick]]
        r = roles[:n_pick]
        r[lo & ~hi] = ROLE_LOW
        r[hi & ~lo] = ROLE_HIGH
    return idx, roles


def random_select(n_pool: int, n_select: int, generator: Optional[torch.Generator] = None,
                  device=None) -> torch.Tensor:
    """``n_select`` distinct indices drawn uniformly from ``range(n_pool)`` (GReg / energy fine-tuning: B random
    outliers per step)."""
    if not isinstance(n_pool, int) or n_pool < 1:
        raise ValueError(f"n_pool: must be an int >= 1, got {n_pool!r}")
    if not isinstance(n_select, int) or not 1 <= n_select <= n_pool:
        raise ValueError(f"n_select: must be an int in [1, n_pool={n_pool}], got {n_select!r}")
    dev = device if device is not None else (generator.device if generator is not None else "cpu")
    return _randperm(n_pool, generator, dev)[:n_select]
