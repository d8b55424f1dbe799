"""The official code's way of doing a GReg / GReg+ step, rebuilt for the benchmark's like-for-like comparison
(not used for training): per-sample PIL transforms, the penalty through a second forward inside
``torch.autograd.functional.jacobian``, and the sampler's host copy to scikit-learn ``KMeans`` with the per-cluster
selection loop and ``random.sample`` top-up (docs/method.md §2.3, §3.2)."""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

from greg_ood.scores import energy as energy_of


def pil_transform(size: int, mean, std):
    """The official training transform, per sample on PIL images: random crop with padding, flip, ToTensor,
    Normalize."""
    from greg_ood._torchvision_compat import import_torchvision

    T = import_torchvision().transforms
    return T.Compose([T.RandomCrop(size, padding=4 if size >= 32 else 2), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(mean, std)])


def pil_batch(images: np.ndarray, idx: np.ndarray, tf, device) -> torch.Tensor:
    from PIL import Image

    xs = []
    for i in idx:
        a = images[i]
        xs.append(tf(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)))
    return torch.stack(xs).to(device, non_blocking=True)


def official_penalty(model, x, n_in, m_in, m_out):
    """The authors' term: second forward inside jacobian of the hinge closure, row L2 norms, mean over rows."""

    def g(inp):
        e = energy_of(model(inp))
        return -F.relu(m_in - e[:n_in]).mean() + F.relu(e[n_in:] - m_out).mean()

    J = torch.autograd.functional.jacobian(g, x, create_graph=True)
    return J.reshape(x.shape[0], -1).norm(dim=1).mean()


def official_select(model, cands, n_select, n_clusters, n_init=3, two_way=True):
    """The official ``clusterAndChooseSamples`` path: eval forward without grad, then :func:`official_select_from`."""
    was = model.training
    model.eval()
    with torch.no_grad():
        z = model.features(cands)
        w = energy_of(model.head(z))
    model.train(was)
    return official_select_from(w, z, n_select, n_clusters, n_init=n_init, two_way=two_way)


def official_select_from(w, z, n_select, n_clusters, n_init=3, spt=0, ept=None, two_way=True):
    """Host copies, per-sample L2 normalisation, scikit-learn KMeans, per-cluster numpy loop, random.sample top-up."""
    from sklearn.cluster import KMeans

    w = np.array(w.float().tolist())
    order = np.argsort(w)
    prox = order[spt:ept]
    rep = F.normalize(z.float().cpu(), dim=-1).numpy()[prox]
    k = min(n_clusters, n_select)
    lab = KMeans(n_clusters=k, n_init=n_init).fit(rep).labels_
    q = 1 if k > n_select else int(n_select / k)
    wp = w[prox]
    picked = []
    for c in range(k):
        members = np.where(lab == c)[0]
        if len(members) <= q:
            picked.extend(prox[members])
        else:
            srt = np.argsort(wp[members])
            add = prox[members[srt[:q]]]
            if two_way:
                add = np.unique(np.concatenate([add, prox[members[srt[-q:]]]]))
            picked.extend(add)
    target = n_select * (2 if two_way else 1)
    if target > len(picked):
        picked.extend(random.sample(sorted(set(prox.tolist()) - set(int(i) for i in picked)), k=target - len(picked)))
    return torch.as_tensor(np.asarray(picked, dtype=np.int64), device=z.device)
