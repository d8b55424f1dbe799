"""Scoring loops: forward the ID test set and every OOD set once, compute every configured detection score
(all "higher = more in-distribution"), then the metrics per set and their mean.

The formulas live in :mod:`greg_ood.scores` and :mod:`greg_ood.metrics`; this module only loops and assembles.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import metrics as MT
from .. import scores as S
from ..data import iter_eval


@torch.inference_mode()
def forward_all(model: torch.nn.Module, images: np.ndarray, *, mean, std, device, batch_size: int = 512):
    """Logits and penultimate features of a whole uint8 N×H×W×C array (eval mode; previous mode restored)."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    try:
        for x in iter_eval(images, batch_size=batch_size, device=device, mean=mean, std=std):
            z = model.features(x)
            logits.append(model.head(z).float().cpu())
            feats.append(z.float().cpu())
    finally:
        model.train(was_training)
    return _joined(logits, feats)


def _joined(logits: list, feats: list) -> tuple[torch.Tensor, torch.Tensor]:
    if not logits:
        raise ValueError("empty image set: nothing to evaluate")
    return torch.cat(logits), torch.cat(feats)


def id_accuracy(model, split, *, mean, std, device, batch_size: int = 512) -> float:
    logits, _ = forward_all(model, split.images, mean=mean, std=std, device=device, batch_size=batch_size)
    return float(MT.accuracy(logits, torch.as_tensor(np.asarray(split.labels)), num_classes=model.num_classes))


def odin_pass(model, images, *, mean, std, device, batch_size, temperature, epsilon):
    """ODIN scores of a whole uint8 array, with its logits and penultimate features: ``(scores [N] numpy, logits,
    features)``. The logits and features come from ODIN's own unperturbed pass (:func:`greg_ood.scores.odin`,
    ``clean``), bit for bit what :func:`forward_all` returns for the same batches, so the set is forwarded once."""
    was_training = model.training
    model.eval()
    out, clean = [], []
    try:
        for x in iter_eval(images, batch_size=batch_size, device=device, mean=mean, std=std):
            out.append(S.odin(model, x, temperature=temperature, epsilon=epsilon, channel_std=std,
                              clean=clean).detach().cpu())
    finally:
        model.train(was_training)
    logits, feats = _joined([lg.float().cpu() for _, lg in clean], [z.float().cpu() for z, _ in clean])
    return torch.cat(out).numpy(), logits, feats


def score_arrays(model, sets: dict, *, names, mean, std, device, batch_size, odin_cfg, maha=None,
                 num_classes: int, logits_out: Optional[dict] = None) -> dict[str, dict[str, np.ndarray]]:
    """``{score: {set: array}}`` for every set (``sets`` maps name -> uint8 images) and score name.
    ``logits_out`` (optional dict) receives each set's logits, so callers need no second forward pass. With ODIN
    among the scores, its pass gives the logits and features too (:func:`odin_pass`)."""
    out: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
    for set_name, images in sets.items():
        if "odin" in names:
            odin_arr, logits, feats = odin_pass(model, images, mean=mean, std=std, device=device,
                                                batch_size=batch_size, temperature=odin_cfg.temperature,
                                                epsilon=odin_cfg.epsilon)
        else:
            logits, feats = forward_all(model, images, mean=mean, std=std, device=device, batch_size=batch_size)
        if logits_out is not None:
            logits_out[set_name] = logits
        for n in names:
            if n == "odin":
                arr = odin_arr
            elif n == "mahalanobis":
                arr = maha.score(feats).cpu().numpy()
            elif n == "absent_class":
                arr = S.absent_class_score(logits).numpy()
            else:
                arr = S.logit_score(n, logits[:, :num_classes] if n != "energy" else logits).numpy()
            out[n][set_name] = arr.astype(np.float32)
    return out


def evaluate(model, *, id_test, ood: dict, eval_cfg, mean, std, device, primary: str,
             fit_split=None) -> tuple[dict, dict, dict]:
    """Return (results, score arrays, roc points) — results in the docs/CONTRACTS.md format (without ids)."""
    names = list(dict.fromkeys(eval_cfg.scores + ([primary] if primary not in eval_cfg.scores else [])))
    K = model.num_classes
    maha = None
    if "mahalanobis" in names:
        if fit_split is None:
            raise ValueError("the mahalanobis score needs the ID training split to fit class means and covariance")
        n = min(eval_cfg.mahalanobis_fit_count, len(fit_split.images))
        idx = np.sort(np.random.RandomState(0).choice(len(fit_split.images), n, replace=False))
        _, feats = forward_all(model, fit_split.images[idx], mean=mean, std=std, device=device,
                               batch_size=eval_cfg.batch_size)
        maha = S.Mahalanobis().fit(feats, torch.as_tensor(np.asarray(fit_split.labels)[idx]))
    sets = {"id": id_test.images, **{k: v.images for k, v in ood.items()}}
    set_logits: dict = {}
    arrays = score_arrays(model, sets, names=names, mean=mean, std=std, device=device,
                          batch_size=eval_cfg.batch_size, odin_cfg=eval_cfg.odin, maha=maha, num_classes=K,
                          logits_out=set_logits)
    acc = float(MT.accuracy(set_logits["id"], torch.as_tensor(np.asarray(id_test.labels)), num_classes=K))
    results = {"id_accuracy": acc, "scores": {}}
    for n in names:
        per_set = {s: MT.ood_metrics(arrays[n]["id"], arrays[n][s], positive=eval_cfg.positive, tpr=eval_cfg.tpr,
                                     fpr_rule=eval_cfg.fpr_rule) for s in ood}
        per_set = {s: {k: float(v) for k, v in m.items()} for s, m in per_set.items()}
        results["scores"][n] = {"per_set": per_set, "mean": MT.mean_over_sets(per_set)}
    prim = results["scores"][primary]["mean"]
    results.update({k: prim[k] for k in ("fpr95", "auroc", "aupr_in", "aupr_out")})
    roc = {s: MT.roc_points(arrays[primary]["id"], arrays[primary][s]) for s in ood}
    return results, arrays, roc
