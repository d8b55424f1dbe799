"""The evaluate stage's scoring loop forwards each set once when ODIN is scored: the logits and features taken from
ODIN's unperturbed pass must equal a plain no-gradient forward bit for bit, so no result changes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from greg_ood import models
from greg_ood import scores as S
from greg_ood.run.config import OdinCfg
from greg_ood.run.evaluation import forward_all, odin_pass, score_arrays

MEAN, STD = [0.3], [0.25]


def _model(extra_outputs: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    m = models.build("small_cnn", 4, in_channels=1, extra_outputs=extra_outputs)
    for mod in m.modules():  # non-trivial eval-mode batch norm
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    return m.train()


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_odin_pass_gives_forward_all_values_bit_for_bit(arch):
    torch.manual_seed(1)
    m = models.build(arch, 4, in_channels=1) if arch != "small_cnn" else _model()
    imgs = _images(37, 0)
    logits, feats = forward_all(m, imgs, mean=MEAN, std=STD, device="cpu", batch_size=16)
    arr, logits2, feats2 = odin_pass(m, imgs, mean=MEAN, std=STD, device="cpu", batch_size=16, temperature=1000.0,
                                     epsilon=0.0014)
    assert torch.equal(logits, logits2) and torch.equal(feats, feats2)
    assert m.training  # the mode is restored
    # the scores are ODIN's, batch by batch, as computed without the shared pass
    m.eval()
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - MEAN[0]) / STD[0]
    ref = torch.cat([S.odin(m, x[i:i + 16], temperature=1000.0, epsilon=0.0014, channel_std=STD)
                     for i in range(0, 37, 16)])
    assert np.array_equal(arr, ref.numpy())


def test_score_arrays_with_odin_equal_separate_passes():
    """Every score of every set, with ODIN sharing its pass, equals the same scores computed from forward_all and a
    separate ODIN pass (a K+1-output model, so the column choice per score is covered)."""
    m = _model(extra_outputs=1)
    sets = {"id": _images(40, 1), "far": _images(25, 2)}
    fit_logits, fit_feats = forward_all(m, _images(60, 3), mean=MEAN, std=STD, device="cpu")
    maha = S.Mahalanobis().fit(fit_feats, fit_logits[:, :4].argmax(1))
    names = ["energy", "msp", "max_logit", "odin", "mahalanobis", "absent_class"]
    got_logits: dict = {}
    got = score_arrays(m, sets, names=names, mean=MEAN, std=STD, device="cpu", batch_size=16, odin_cfg=OdinCfg(),
                       maha=maha, num_classes=4, logits_out=got_logits)
    for set_name, imgs in sets.items():
        logits, feats = forward_all(m, imgs, mean=MEAN, std=STD, device="cpu", batch_size=16)
        odin, _, _ = odin_pass(m, imgs, mean=MEAN, std=STD, device="cpu", batch_size=16,
                               temperature=OdinCfg().temperature, epsilon=OdinCfg().epsilon)
        want = {"energy": S.energy_score(logits), "msp": S.msp(logits[:, :4]), "max_logit": S.max_logit(logits[:, :4]),
                "odin": torch.as_tensor(odin), "mahalanobis": maha.score(feats),
                "absent_class": S.absent_class_score(logits)}
        assert torch.equal(got_logits[set_name], logits)
        for n in names:
            assert np.array_equal(got[n][set_name], want[n].numpy().astype(np.float32)), (set_name, n)


def test_odin_pass_refuses_an_empty_set():
    with pytest.raises(ValueError, match="empty image set"):
        odin_pass(_model(), _images(0, 0), mean=MEAN, std=STD, device="cpu", batch_size=16, temperature=1000.0,
                  epsilon=0.0014)
