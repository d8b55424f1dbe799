"""Batched augmentation, normalisation and the device batch sources: hand-checked pixels, determinism, resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from greg_ood import data as D
from greg_ood.data.augment import apply_crop_flip, crop_flip_params, generator, normalize, random_crop_flip


def _img():
    return torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)  # rows [1..4], [5..8], [9..12], [13..16]


def test_crop_flip_hand_checked_pixels():
    x = _img()
    out = apply_crop_flip(x, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), padding=1)
    assert out[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]]
    out = apply_crop_flip(x, torch.tensor([2]), torch.tensor([1]), torch.tensor([False]), padding=1)
    assert out[0, 0].tolist() == [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [0, 0, 0, 0]]
    out = apply_crop_flip(x, torch.tensor([1]), torch.tensor([1]), torch.tensor([True]), padding=1)
    assert out[0, 0].tolist() == [[4, 3, 2, 1], [8, 7, 6, 5], [12, 11, 10, 9], [16, 15, 14, 13]]
    out = apply_crop_flip(x, torch.tensor([0]), torch.tensor([2]), torch.tensor([True]), padding=1)
    assert out[0, 0].tolist() == [[0, 0, 0, 0], [0, 4, 3, 2], [0, 8, 7, 6], [0, 12, 11, 10]]


def test_crop_flip_matches_torchvision_functional():
    from greg_ood._torchvision_compat import import_torchvision

    F = import_torchvision().transforms.functional
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    dy, dx, fl = crop_flip_params(6, 4, True, generator(1))
    out = apply_crop_flip(x, dy, dx, fl, 4)
    for i in range(6):
        ref = F.crop(F.pad(x[i], [4]), int(dy[i]), int(dx[i]), 8, 8)
        ref = F.hflip(ref) if fl[i] else ref
        assert torch.equal(out[i], ref)


def test_random_crop_flip_statistics_and_determinism():
    x = torch.randint(1, 256, (4000, 1, 8, 8), dtype=torch.uint8)
    a = random_crop_flip(x, 2, True, generator(0))
    b = random_crop_flip(x, 2, True, generator(0))
    c = random_crop_flip(x, 2, True, generator(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape and a.dtype == torch.uint8
    dy, dx, fl = crop_flip_params(4000, 2, True, generator(0))
    assert set(dy.tolist()) == set(range(5)) and set(dx.tolist()) == set(range(5))
    assert 0.45 < fl.float().mean() < 0.55
    centred = (dy == 2) & (dx == 2) & ~fl
    assert torch.equal(a[centred], x[centred])  # offset (p, p) without flip is the identity
    assert torch.equal(random_crop_flip(x, 0, False), x)


def test_normalize_uses_given_mean_std():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # 1×2×1×2
    out = normalize(x, [0.5, 0.2], [0.25, 0.1])
    expected = torch.tensor([[[[-2.0, 2.0]], [[0.0, 2.0]]]])
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(normalize(x, [0.5], [0.5]), x.float() / 127.5 - 1)
    with pytest.raises(ValueError):
        normalize(x, [0.1, 0.2, 0.3], [1, 1, 1])


def _source(**kw):
    rng = np.random.RandomState(0)
    imgs = rng.randint(0, 256, size=(103, 6, 6, 3)).astype(np.uint8)
    labels = np.arange(103)
    args = dict(batch_size=10, device="cpu", mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], crop_padding=2, flip=True,
                seed=3, stream="id")
    args.update(kw)
    return imgs, D.DeviceArraySource(imgs, labels, **args)


def test_device_array_source_is_a_pure_function_of_seed_epoch_step():
    imgs, s = _source()
    assert s.steps_per_epoch == 10  # drop_last
    x1, y1 = s.batch(1, 4)
    x2, y2 = s.batch(1, 4)
    assert x1.shape == (10, 3, 6, 6) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    _, fresh = _source()  # a "resumed" process: no state carried over
    xf, yf = fresh.batch(1, 4)
    assert torch.equal(x1, xf) and torch.equal(y1, yf)
    assert not torch.equal(s.batch(1, 5)[1], y1)
    assert not torch.equal(s.permutation(0), s.permutation(1))
    ys = torch.cat([y for _, y in s.iter_epoch(2)])
    assert len(set(ys.tolist())) == 100  # no repeats inside an epoch
    resumed = [y for _, y in s.iter_epoch(2, start_step=7)]
    assert torch.equal(torch.cat(resumed), ys[70:])
    _, other_stream = _source(stream="aux")
    assert not torch.equal(other_stream.batch(1, 4)[1], y1)
    _, other_seed = _source(seed=4)
    assert not torch.equal(other_seed.batch(1, 4)[1], y1)


def test_device_array_source_without_augmentation_is_normalised_rows():
    imgs, s = _source(crop_padding=0, flip=False)
    x, y = s.batch(0, 3)
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    raw = torch.from_numpy(imgs[y.numpy()]).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x * std + mean, raw, atol=1e-6)  # labels travel with their images


def test_device_array_source_rejects_too_small_sets():
    with pytest.raises(ValueError, match="less than one batch"):
        D.DeviceArraySource(np.zeros((5, 4, 4, 1), np.uint8), None, batch_size=8, device="cpu", mean=[0.5],
                            std=[0.5])
    s = D.DeviceArraySource(np.zeros((5, 4, 4, 1), np.uint8), None, batch_size=4, device="cpu", mean=[0.5],
                            std=[0.5], drop_last=False)
    assert s.steps_per_epoch == 2 and s.batch(0, 1)[0].shape[0] == 1


def test_iter_eval_in_order_with_partial_last_batch():
    imgs = np.random.RandomState(1).randint(0, 256, size=(23, 5, 5, 1)).astype(np.uint8)
    batches = list(D.iter_eval(imgs, batch_size=10, device="cpu", mean=[0.5], std=[0.25]))
    assert [b.shape[0] for b in batches] == [10, 10, 3]
    x = torch.cat(batches)
    assert torch.allclose(x, (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25)


# (parts, seed) pinned from blake2b-64 of repr(parts), masked to 63 bits: every stream of every run depends on these
DERIVED_SEEDS = [((0, "id", 0, 0), 1968794485667981143), ((1234, "sample", 3, 17), 245433921243871844),
                 ((2, "sample.rank1", 0, 5), 2876829928131826469), ((), 5694367389426422167)]


@pytest.mark.parametrize("parts,seed", DERIVED_SEEDS)
def test_derive_seed_pinned_values_and_the_trainer_computes_the_same(parts, seed):
    from greg_ood.run import trainer

    assert D.derive_seed(*parts) == seed
    assert trainer.derive_seed(*parts) == seed  # the trainer's step generators must see the same seeds
