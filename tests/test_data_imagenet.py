"""ImageNet: shipped class lists vs the RandomState(1993) rule, root discovery errors, file lists from a tiny
extracted tree, and the file-list batch source (RandomResizedCrop / Resize+CenterCrop, determinism, resume)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from greg_ood import data as D
from greg_ood.data import imagenet as IN
from greg_ood.data.datasets import decode_test, random_resized_crop_box
from greg_ood.data.images import center_crop, resize_shorter

# the official code's 100-class list (imagenetIdClassAndIndex100.pth), typed out: entry i is the wnid with label i
DOCUMENTED_100 = """
n02396427 n04141975 n02834397 n02111277 n03534580 n01877812 n02837789 n01443537 n02114367 n03857828
n02397096 n01514668 n03888257 n04579145 n01742172 n02165456 n03840681 n04019541 n03873416 n04208210
n03930630 n04258138 n02526121 n02111889 n02138441 n07875152 n02127052 n02110185 n02916936 n03208938
n01882714 n03977966 n02793495 n03717622 n02443484 n03854065 n01873310 n04515003 n02869837 n02086079
n04443257 n03697007 n03197337 n03991062 n01855672 n04147183 n03888605 n03804744 n04336792 n02264363
n02843684 n02088094 n03272010 n04141327 n01440764 n02769748 n02422699 n02165105 n03673027 n03063599
n04560804 n04392985 n01773549 n02104029 n02094433 n03676483 n04118538 n01872401 n02870880 n02071294
n02018795 n02128925 n04325704 n02090622 n02105412 n01756291 n02108089 n01744401 n03250847 n02643566
n03733131 n04554684 n04350905 n04270147 n04493381 n01632458 n03595614 n03379051 n03160309 n02093991
n03085013 n02859443 n02093754 n02085936 n02006656 n13037406 n03933933 n03062245 n02840245 n02325366
""".split()


def test_shipped_id_list_is_the_documented_one():
    assert list(IN.shipped_id_classes()) == DOCUMENTED_100
    assert IN.id_classes(10) == DOCUMENTED_100[:10]
    assert IN.id_classes(50) == DOCUMENTED_100[:50]
    with pytest.raises(ValueError, match="num_classes"):
        IN.id_classes(30)


def test_permutation_rule_over_shipped_sorted_wnids():
    w = IN.sorted_wnids()
    assert len(w) == 1000 and len(set(w)) == 1000 and list(w) == sorted(w)
    assert all(len(x) == 9 and x[0] == "n" and x[1:].isdigit() for x in w)
    # the rule on known positions, independently of the shipped list: n01440764 and n01443537 are the first two
    perm = np.random.RandomState(1993).permutation(1000)
    assert (w[0], w[1]) == ("n01440764", "n01443537") and (perm[0], perm[1]) == (54, 7)
    idx = IN.class_indices()
    assert idx["n01440764"] == 54 and idx["n01443537"] == 7 and idx["n01514668"] == 11
    by_index = sorted(idx, key=idx.get)
    assert by_index[:100] == DOCUMENTED_100  # all 100 documented positions follow from the rule


def test_missing_or_wrong_root_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        IN.locate(None)
    msg = str(ei.value)
    assert "imagenet_root" in msg and "train/<wnid>/" in msg and "ILSVRC2012_img_train.tar" in msg
    assert "ILSVRC2012_devkit_t12.tar.gz" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        IN.locate(tmp_path / "nope")
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="missing.*ILSVRC2012_img_train.tar"):
        IN.locate(tmp_path)
    with pytest.raises(FileNotFoundError, match="imagenet_root is not set"):
        D.prepare("imagenet", data_dir=tmp_path / "d", progress=False)


def _jpeg(path, rng, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)).save(path, format="JPEG")


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("ilsvrc")
    rng = np.random.RandomState(0)
    ids = DOCUMENTED_100[:10]
    others = [w for w in IN.sorted_wnids() if w not in DOCUMENTED_100][:3]
    for w in ids + others:
        for k in range(3):
            _jpeg(root / "train" / w / f"{w}_{k}.JPEG", rng, 40 + 7 * k, 50)
    for w in ids:
        _jpeg(root / "val" / w / f"ILSVRC2012_val_{w}.JPEG", rng, 60, 45)
    data = tmp_path_factory.mktemp("data")
    man = D.prepare("imagenet", data_dir=data, options={"imagenet_root": str(root), "num_classes": 10},
                    progress=False)
    return root, data, man, ids, others


def test_imagenet_file_lists(tiny_imagenet):
    root, data, man, ids, others = tiny_imagenet
    tr = D.load_split(data, "imagenet", "train")
    va = D.load_split(data, "imagenet", "val")
    aux = D.load_split(data, "imagenet", "aux")
    assert len(tr) == 30 and len(va) == 10 and len(aux) == 9
    for f, y in zip(tr.files, tr.labels):
        assert f.split("/")[1] == ids[y]  # label = index in the ID list
    assert sorted(set(tr.labels.tolist())) == list(range(10)) and tr.class_names == ids
    assert {f.split("/")[1] for f in aux.files} == set(others) and (aux.labels == -1).all()
    assert man["splits"]["aux"]["aux_classes"] == 3 and man["id_wnids"] == ids
    assert tr.root == root and all(p.is_file() for p in tr.paths)
    assert tr.mean == IN.IMAGENET_MEAN and tr.std == IN.IMAGENET_STD
    assert any("1000 expected" in w for w in man["warnings"])
    sub = D.load_split(data, "imagenet", "train", classes=[2, 5])
    assert len(sub) == 6 and set(sub.labels.tolist()) == {0, 1}


def test_test_transform_matches_torchvision(tmp_path):
    from greg_ood._torchvision_compat import import_torchvision

    T = import_torchvision().transforms
    rng = np.random.RandomState(1)
    for h, w in [(300, 400), (257, 256), (500, 260)]:
        im = Image.fromarray(rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8))
        ours = np.asarray(center_crop(resize_shorter(im, 256), 224))
        ref = np.asarray(T.CenterCrop(224)(T.Resize(256)(im)))
        np.testing.assert_array_equal(ours, ref)
        ours32 = np.asarray(center_crop(resize_shorter(im, 32), 32))
        np.testing.assert_array_equal(ours32, np.asarray(T.CenterCrop(32)(T.Resize(32)(im))))


def test_random_resized_crop_box():
    import random

    boxes = [random_resized_crop_box(300, 200, random.Random(s)) for s in range(300)]
    assert boxes[:5] == [random_resized_crop_box(300, 200, random.Random(s)) for s in range(5)]
    for left, top, w, h in boxes:
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200 and w > 0 and h > 0
    frac = np.array([w * h / 60000 for _, _, w, h in boxes])
    assert frac.min() < 0.2 and frac.max() > 0.8


def _src(split, **kw):
    args = dict(batch_size=4, device="cpu", mean=IN.IMAGENET_MEAN, std=IN.IMAGENET_STD, seed=1, stream="id",
                num_workers=0)
    args.update(kw)
    return D.FileListSource(split, **args)


def test_file_list_source_train_determinism_and_resume(tiny_imagenet):
    _, data, _, _, _ = tiny_imagenet
    tr = D.load_split(data, "imagenet", "train")
    s = _src(tr)
    assert s.steps_per_epoch == 7
    x, y = s.batch(0, 2)
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    x2, y2 = _src(tr).batch(0, 2)  # a fresh source (a resumed run) reproduces it
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(s.batch(0, 3)[0], x)
    seq = [b for b in s.iter_epoch(1)]
    resumed = list(s.iter_epoch(1, start_step=5))
    assert len(seq) == 7 and len(resumed) == 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(seq[5:], resumed))
    assert torch.equal(s.batch(1, 5)[0], seq[5][0]) and torch.equal(s.batch(1, 6)[0], seq[6][0])
    w2 = _src(tr, num_workers=2)  # same result whichever worker decodes
    try:
        assert torch.equal(w2.batch(0, 2)[0], x)
        assert torch.equal(w2.batch(0, 3)[0], s.batch(0, 3)[0])  # served by the running iterator
    finally:
        w2.close()


def test_file_list_source_test_mode_and_iter_eval(tiny_imagenet):
    _, data, _, _, _ = tiny_imagenet
    va = D.load_split(data, "imagenet", "val")
    s = _src(va, train=False)
    assert s.steps_per_epoch == 3  # no drop_last in test mode
    xs = torch.cat([x for x, _ in s.iter_epoch(0)])
    ev = torch.cat(list(D.iter_eval(va.images, batch_size=4, device="cpu", mean=IN.IMAGENET_MEAN,
                                    std=IN.IMAGENET_STD, num_workers=0)))
    assert torch.equal(xs, ev) and xs.shape == (10, 3, 224, 224)
    ref = torch.from_numpy(decode_test(va.paths[0])).permute(2, 0, 1).float() / 255
    mean = torch.tensor(IN.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IN.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(ev[0] * std + mean, ref, atol=1e-6)
    sub = va.images[np.array([1, 3])]
    assert np.asarray(sub).shape == (2, 224, 224, 3) and np.asarray(sub).dtype == np.uint8


def test_overlap_guard_on_file_lists(tiny_imagenet):
    import shutil

    root, data, _, _, _ = tiny_imagenet
    va = D.load_split(data, "imagenet", "val")
    aux = D.load_split(data, "imagenet", "aux")
    assert D.overlap_guard(aux, {"val": va}) == {"val": 0}
    dup = root / "train" / aux.files[0].split("/")[1] / "copied_val.JPEG"
    shutil.copyfile(va.paths[3], dup)
    aux2 = D.FileListSplit(root=root, files=aux.files + [dup.relative_to(root).as_posix()],
                           labels=np.full(len(aux) + 1, -1), class_names=[], mean=aux.mean, std=aux.std)
    try:
        assert D.overlap_guard(aux2, {"val": va}) == {"val": 1}
    finally:
        dup.unlink()
