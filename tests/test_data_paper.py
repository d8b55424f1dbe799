"""download -> verify -> prepare end to end through the registry code, for every paper dataset format, with small
archives in the real formats served from a local HTTP server (URLs/checksums overridden for the test)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_fixtures import (closed_port_url, cifar10_tarball, cifar100_tarball, image_folder_tarball,
                           npy_bytes, source_for, svhn_mat, write)
from greg_ood import data as D
from greg_ood.data import download as DL
from greg_ood.data.images import center_crop, resize_shorter
from PIL import Image


def _serve(server, name, filename, data):
    return {filename: source_for(filename, data, [server.add(f"/{name}/{filename}", data)])}


def _prep(name, tmp_path, sources, **options):
    options.setdefault("retries", 2)
    options.setdefault("timeout", 5)
    return D.prepare(name, data_dir=tmp_path, options=options, progress=False, sources=sources)


def test_cifar10_end_to_end_with_resume_and_reuse(server, tmp_path):
    data, exp = cifar10_tarball()
    srcs = _serve(server, "c10", "cifar-10-python.tar.gz", data)
    server.modes["/c10/cifar-10-python.tar.gz"] = ["cut"]
    man = _prep("cifar10", tmp_path, srcs)
    assert man["sources"][0]["url_used"].endswith("/c10/cifar-10-python.tar.gz")
    assert man["sources"][0]["md5"] == srcs["cifar-10-python.tar.gz"].md5
    tr = D.load_split(tmp_path, "cifar10", "train")
    te = D.load_split(tmp_path, "cifar10", "test", verify="full")
    np.testing.assert_array_equal(tr.images, exp["train"][0])  # channel-planar rows -> HWC, batches in order
    np.testing.assert_array_equal(tr.labels, exp["train"][1])
    np.testing.assert_array_equal(te.images, exp["test"][0])
    assert tr.images.dtype == np.uint8 and tr.labels.dtype == np.int64 and tr.class_names == exp["names"]
    m = man["splits"]["train"]
    assert m["count"] == 30 and m["shape"] == [30, 32, 32, 3]
    np.testing.assert_allclose(m["mean"], (exp["train"][0] / 255.0).reshape(-1, 3).mean(0), rtol=1e-9)
    np.testing.assert_allclose(m["std"], (exp["train"][0] / 255.0).reshape(-1, 3).std(0), rtol=1e-9)
    assert sorted(os.listdir(tmp_path / "prepared" / "cifar10")) == [
        "manifest.json", "test.images.npy", "test.labels.npy", "train.images.npy", "train.labels.npy"]
    # idempotent: the verified prepared copy is reused, nothing is fetched again
    n = len(server.log)
    assert _prep("cifar10", tmp_path, srcs) == man and len(server.log) == n


def test_cifar100(server, tmp_path):
    data, exp = cifar100_tarball()
    _prep("cifar100", tmp_path, _serve(server, "c100", "cifar-100-python.tar.gz", data))
    for split in ("train", "test"):
        s = D.load_split(tmp_path, "cifar100", split)
        np.testing.assert_array_equal(s.images, exp[split][0])
        np.testing.assert_array_equal(s.labels, exp[split][1])
        assert len(s.class_names) == 100


def test_svhn_manual_placement(tmp_path, monkeypatch):
    monkeypatch.setattr(DL, "DEFAULT_BACKOFF", 0.0)
    data, exp = svhn_mat()
    src = {"test_32x32.mat": source_for("test_32x32.mat", data, [closed_port_url("/test_32x32.mat")])}
    dest = tmp_path / "raw" / "svhn" / "test_32x32.mat"
    with pytest.raises(D.ManualDownloadRequired) as ei:
        _prep("svhn", tmp_path, src)
    assert str(dest) in str(ei.value) and src["test_32x32.mat"].md5 in str(ei.value)
    assert not (tmp_path / "prepared" / "svhn").exists()  # nothing half-made left behind
    write(dest, data)
    man = _prep("svhn", tmp_path, src)
    assert man["sources"][0]["url_used"].startswith("local copy")
    s = D.load_split(tmp_path, "svhn", "test")
    np.testing.assert_array_equal(s.images, exp["images"])  # X 32×32×3×N -> N×32×32×3
    np.testing.assert_array_equal(s.labels, exp["labels"])  # 10 -> 0
    assert 0 in s.labels and s.labels.max() <= 9


def test_tinyimages300k(server, tmp_path):
    a = np.random.RandomState(3).randint(0, 256, size=(20, 32, 32, 3)).astype(np.uint8)
    man = _prep("tinyimages300k", tmp_path, _serve(server, "ti", "300K_random_images.npy", npy_bytes(a)))
    s = D.load_split(tmp_path, "tinyimages300k", "train", verify="full")
    np.testing.assert_array_equal(s.images, a)
    assert (s.labels == -1).all() and man["splits"]["train"]["count"] == 20
    assert any("300000 expected" in w for w in man["warnings"])


def _rand(rng, h, w):
    return rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)


def test_dtd_resize_then_center_crop(server, tmp_path):
    rng = np.random.RandomState(4)
    layout = {"dtd/images/banded/banded_0001.jpg": _rand(rng, 40, 60),
              "dtd/images/banded/banded_0002.jpg": _rand(rng, 64, 48),
              "dtd/images/zigzagged/zigzagged_0001.jpg": _rand(rng, 50, 50)}
    blob = image_folder_tarball(layout)  # PNG content under the real .jpg names: lossless for exact checks
    blob_members = dict(layout)
    man = _prep("dtd", tmp_path, _serve(server, "dtd", "dtd-r1.0.1.tar.gz", blob))
    s = D.load_split(tmp_path, "dtd", "test")
    assert s.images.shape == (3, 32, 32, 3) and s.class_names == ["banded", "zigzagged"]
    assert s.labels.tolist() == [0, 0, 1]
    for i, (name, arr) in enumerate(sorted(blob_members.items())):
        ref = np.asarray(center_crop(resize_shorter(Image.fromarray(arr), 32), 32))
        np.testing.assert_array_equal(s.images[i], ref)
    assert man["splits"]["test"]["rule"] == "resize_crop"


def test_lsun_crop_resize_and_isun(server, tmp_path):
    rng = np.random.RandomState(5)
    c = {f"LSUN/test/{i:04d}.jpg": _rand(rng, 36, 36) for i in range(4)}
    r = {f"LSUN_resize/LSUN_resize/{i:04d}.jpg": _rand(rng, 32, 32) for i in range(3)}
    s_ = {f"iSUN/iSUN_patches/{i:04d}.jpeg": _rand(rng, 32, 32) for i in range(3)}
    s_["iSUN/iSUN_patches/odd.jpeg"] = _rand(rng, 30, 40)  # not 32×32: the fallback applies and is reported
    _prep("lsun_crop", tmp_path, _serve(server, "l", "LSUN.tar.gz", image_folder_tarball(c)))
    _prep("lsun_resize", tmp_path, _serve(server, "l", "LSUN_resize.tar.gz", image_folder_tarball(r)))
    man = _prep("isun", tmp_path, _serve(server, "i", "iSUN.tar.gz", image_folder_tarball(s_)))
    lc = D.load_split(tmp_path, "lsun_crop", "test")
    for i, (_, a) in enumerate(sorted(c.items())):
        np.testing.assert_array_equal(lc.images[i], a[2:34, 2:34])  # CenterCrop(32) of 36×36
    lr = D.load_split(tmp_path, "lsun_resize", "test")
    np.testing.assert_array_equal(lr.images, np.stack([a for _, a in sorted(r.items())]))
    assert D.load_split(tmp_path, "isun", "test").images.shape == (4, 32, 32, 3)
    assert man["splits"]["test"]["resized_fallback"] == 1 and man["warnings"]


def test_places365_seeded_subset_file_list(server, tmp_path):
    rng = np.random.RandomState(6)
    layout = {f"val_256/Places365_val_{i:08d}.jpg": _rand(rng, 48, 40) for i in range(1, 31)}
    blob = image_folder_tarball(layout, compression="", fmt="JPEG")  # an uncompressed tar, like val_256.tar
    srcs = _serve(server, "p", "val_256.tar", blob)
    man = _prep("places365", tmp_path, srcs, count=10, seed=7)
    files = man["splits"]["test"]["files"]
    assert len(files) == 10 and files == sorted(files) and len(set(files)) == 10
    assert man["splits"]["test"]["pool_size"] == 30 and man["options"]["places_source"] == "val_256"
    assert D.load_split(tmp_path, "places365", "test").images.shape == (10, 32, 32, 3)
    man2 = _prep("places365", tmp_path / "again", srcs, count=10, seed=7)
    assert man2["splits"]["test"]["files"] == files
    assert _prep("places365", tmp_path / "other", srcs, count=10, seed=8)["splits"]["test"]["files"] != files
    with pytest.raises(ValueError, match="unknown option"):
        _prep("places365", tmp_path, srcs, cuont=3)


def test_imagenet_ood_file_list(server, tmp_path):
    rng = np.random.RandomState(8)
    layout = {f"iNaturalist/images/{i:05d}.jpg": _rand(rng, 300, 260) for i in range(12)}
    man = _prep("inaturalist", tmp_path, _serve(server, "n", "iNaturalist.tar.gz", image_folder_tarball(layout)),
                count=5, seed=0)
    s = D.load_split(tmp_path, "inaturalist", "test")
    assert isinstance(s, D.FileListSplit) and len(s) == 5 and all(p.is_file() for p in s.paths)
    assert s.images.shape == (5, 224, 224, 3) and s.images[0].shape == (224, 224, 3)
    doc = json.loads((tmp_path / "prepared" / "inaturalist" / "test.files.json").read_text())
    assert doc["root"] == "raw/inaturalist/iNaturalist.extracted" and len(doc["files"]) == 5
    assert man["splits"]["test"]["pool_size"] == 12


def test_load_split_detects_replaced_or_truncated_arrays(server, tmp_path):
    data, _ = cifar10_tarball()
    srcs = _serve(server, "c10", "cifar-10-python.tar.gz", data)
    _prep("cifar10", tmp_path, srcs)
    p = tmp_path / "prepared" / "cifar10" / "train.images.npy"
    good = p.read_bytes()
    p.write_bytes(good[:-100])  # truncated
    with pytest.raises(D.PreparedDataError) as ei:
        D.load_split(tmp_path, "cifar10", "train")
    assert str(p) in str(ei.value) and "dvc repro download@cifar10" in str(ei.value)
    p.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one pixel changed
    with pytest.raises(D.PreparedDataError, match="changed after preparation"):
        D.load_split(tmp_path, "cifar10", "train")
    with pytest.raises(D.PreparedDataError, match="sha256"):
        D.load_split(tmp_path, "cifar10", "train", verify="full")
    D.load_split(tmp_path, "cifar10", "train", verify="none")  # explicitly unchecked
    # prepare() notices and rebuilds instead of reusing
    _prep("cifar10", tmp_path, srcs)
    assert p.read_bytes() == good
    with pytest.raises(D.PreparedDataError, match="not prepared"):
        D.load_split(tmp_path, "svhn", "test")
    with pytest.raises(D.PreparedDataError, match="no split 'val'"):
        D.load_split(tmp_path, "cifar10", "val")


def test_registry_is_complete():
    paper = {"cifar10", "cifar100", "tinyimages300k", "dtd", "svhn", "places365", "lsun_crop", "lsun_resize",
             "isun", "imagenet", "inaturalist", "sun", "places", "dtd_imagenet"}
    mini = {"fashion_mnist", "skimage_crops", "digits", "textures", "faces", "gaussian_noise", "uniform_noise"}
    openood = {"tin597", "openood_tin", "openood_mnist", "openood_places365"}
    assert set(D.DATASETS) == paper | mini | openood
    for spec in D.DATASETS.values():
        for s in spec.sources:
            # OpenOOD publishes no checksums: its files are used as fetched, their sha256 recorded (test_openood.py)
            assert s.md5 or s.sha256 or spec.name in openood, s.filename
            assert all(u.startswith(("https://", "http://")) for u in s.urls)
            if s.urls:
                assert s.urls[0].startswith("https://") or "ufldl" in s.urls[0], s.urls[0]
    assert D.DATASETS["cifar10"].sources[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert D.DATASETS["places365"].options == {"places_source": "val_256", "count": 10000, "seed": 0}


def test_parsing_agrees_with_torchvision_dataset_classes(server, tmp_path, monkeypatch):
    """Our CIFAR/SVHN converters read the same arrays as torchvision's classes on the same local files (their
    hard-coded checksums are bypassed for the small test archives)."""
    import tarfile

    from greg_ood._torchvision_compat import import_torchvision

    tv = import_torchvision()
    monkeypatch.setattr(tv.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv.datasets.SVHN, "_check_integrity", lambda self: True)
    data, _ = cifar10_tarball()
    _prep("cifar10", tmp_path, _serve(server, "c10", "cifar-10-python.tar.gz", data))
    with tarfile.open(tmp_path / "raw" / "cifar10" / "cifar-10-python.tar.gz") as t:
        t.extractall(tmp_path / "tv", filter="data")
    for train, split in ((True, "train"), (False, "test")):
        ref = tv.datasets.CIFAR10(str(tmp_path / "tv"), train=train, download=False)
        ours = D.load_split(tmp_path, "cifar10", split)
        np.testing.assert_array_equal(ours.images, ref.data)
        np.testing.assert_array_equal(ours.labels, np.asarray(ref.targets))
        assert ours.class_names == ref.classes
    mat, _ = svhn_mat()
    _prep("svhn", tmp_path, _serve(server, "s", "test_32x32.mat", mat))
    write(tmp_path / "tvs" / "test_32x32.mat", mat)
    ref = tv.datasets.SVHN(str(tmp_path / "tvs"), split="test", download=False)
    ours = D.load_split(tmp_path, "svhn", "test")
    np.testing.assert_array_equal(ours.images, ref.data.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ours.labels, ref.labels)
