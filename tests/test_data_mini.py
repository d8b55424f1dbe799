"""The offline mini suite, prepared from the real Fashion-MNIST (Debian package) and the data bundled with
scikit-image / scikit-learn, with every network connection refused."""
from __future__ import annotations

import hashlib
import socket
import time

import numpy as np
import pytest

from greg_ood import data as D
from greg_ood.data import mini as M
from greg_ood.data.download import find_system_copy

MINI = ["fashion_mnist", "skimage_crops", "digits", "textures", "faces", "gaussian_noise", "uniform_noise"]
HAVE_FMNIST = find_system_copy(D.DATASETS["fashion_mnist"].sources[0]) is not None


def _no_network(*a, **k):
    raise OSError("network access attempted during the offline mini-suite test")


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini")
    names = MINI if HAVE_FMNIST else MINI[1:]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        t0 = time.perf_counter()
        manifests = {n: D.prepare(n, data_dir=d, progress=False) for n in names}
        seconds = time.perf_counter() - t0
    print(f"\nmini suite prepared in {seconds:.1f} s")
    assert seconds < 60, f"mini suite took {seconds:.1f} s"
    return d, manifests


def test_every_mini_set_is_28x28x1_uint8_with_expected_counts(mini_dir):
    d, manifests = mini_dir
    expected = {"skimage_crops": ("train", 50000), "digits": ("test", 1797), "textures": ("test", 2000),
                "faces": ("test", 100), "gaussian_noise": ("test", 2000), "uniform_noise": ("test", 2000)}
    for name, (split, n) in expected.items():
        s = D.load_split(d, name, split, verify="full")
        assert s.images.shape == (n, 28, 28, 1) and s.images.dtype == np.uint8, name
        assert s.labels.dtype == np.int64 and len(s.labels) == n
        assert 0.0 < s.mean[0] < 1.0 and 0.0 < s.std[0] < 0.5
        assert not manifests[name]["warnings"], manifests[name]["warnings"]
    img = D.load_split(d, "digits", "test").images
    assert img.min() == 0 and img.max() == 255  # 0..16 mapped onto the full range
    assert D.load_split(d, "uniform_noise", "test").images.max() == 255
    g = D.load_split(d, "gaussian_noise", "test").images.astype(float)
    assert abs(g.mean() - 127.5) < 2 and 55 < g.std() < 65


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_id_and_near_ood_selection(mini_dir):
    d, manifests = mini_dir
    m = manifests["fashion_mnist"]
    assert m["splits"]["train"]["count"] == 60000 and m["splits"]["test"]["count"] == 10000
    assert m["sources"][0]["path"].startswith("/usr/share/datasets/fashion-mnist/")
    full = D.load_split(d, "fashion_mnist", "train")
    assert full.images.shape == (60000, 28, 28, 1) and len(full.class_names) == 10
    assert np.bincount(full.labels).tolist() == [6000] * 10
    idt = D.load_split(d, "fashion_mnist", "train", classes=[0, 1, 2, 3, 4, 5])
    assert len(idt) == 36000 and set(idt.labels.tolist()) == set(range(6))
    assert idt.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal"]
    assert (full.labels[idt.indices] < 6).all()  # no near-OOD class in the ID selection
    np.testing.assert_allclose(idt.mean[0], full.images[idt.indices].mean() / 255.0, rtol=1e-9)
    near = D.load_split(d, "fashion_mnist", "test", classes=[6, 7, 8, 9], relabel=False)
    assert len(near) == 4000 and set(near.labels.tolist()) == {6, 7, 8, 9}
    ide = D.load_split(d, "fashion_mnist", "test", classes=[0, 1, 2, 3, 4, 5])
    assert not set(ide.indices.tolist()) & set(near.indices.tolist())
    rl = D.load_split(d, "fashion_mnist", "test", classes=[9, 6])
    assert set(rl.labels.tolist()) == {0, 1} and rl.class_names == ["Ankle boot", "Shirt"]
    with pytest.raises(ValueError, match="do not exist"):
        D.load_split(d, "fashion_mnist", "test", classes=[3, 11])


def test_skimage_files_are_bundled_in_the_wheel():
    for name in M.AUX_PHOTOS + M.TEXTURE_PHOTOS + (M.FACES_FILE,):
        p = M.skimage_data_dir() / name
        assert p.is_file(), f"{p} is not shipped inside scikit-image"
        reg = M._registry_sha256(name)
        if reg:  # the bundled file is the one scikit-image's registry knows
            assert hashlib.sha256(p.read_bytes()).hexdigest() == reg


def test_aux_sources_are_disjoint_from_ood_sources(mini_dir):
    d, manifests = mini_dir
    assert not set(M.AUX_PHOTOS) & set(M.TEXTURE_PHOTOS)
    assert M.FACES_FILE not in M.AUX_PHOTOS
    aux_files = {r["file"] for r in manifests["skimage_crops"]["source_files"]}
    tex_files = {r["file"] for r in manifests["textures"]["source_files"]}
    assert aux_files and tex_files and not aux_files & tex_files
    aux = D.load_split(d, "skimage_crops", "train")
    others = {n: D.load_split(d, n, "test") for n in ["digits", "textures", "faces", "gaussian_noise"]}
    assert D.overlap_guard(aux, others) == {n: 0 for n in others}


def test_seeded_sets_are_reproducible(tmp_path):
    for name, split in [("skimage_crops", "train"), ("textures", "test"), ("gaussian_noise", "test")]:
        a = D.prepare(name, data_dir=tmp_path / "a", options={"count": 300, "seed": 5}, progress=False)
        b = D.prepare(name, data_dir=tmp_path / "b", options={"count": 300, "seed": 5}, progress=False)
        c = D.prepare(name, data_dir=tmp_path / "c", options={"count": 300, "seed": 6}, progress=False)
        assert a["splits"][split]["images_sha256"] == b["splits"][split]["images_sha256"]
        assert a["splits"][split]["images_sha256"] != c["splits"][split]["images_sha256"]
    with pytest.raises(ValueError, match="unknown option"):
        D.prepare("faces", data_dir=tmp_path, options={"count": 3})


def test_random_crops_vary_size_position_and_flip():
    from PIL import Image

    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1)))  # brightness grows to the right
    imgs, src = M.random_crops([ramp], 400, seed=0, min_size=24, max_size=256)
    left, right = imgs[:, :, 0, 0].astype(int).mean(1), imgs[:, :, -1, 0].astype(int).mean(1)
    flipped = left > right
    assert 0.3 < flipped.mean() < 0.7  # horizontal flips happen about half the time
    spans = np.abs(right - left)
    assert spans.min() < 30 and spans.max() > 180  # small and large crops
    assert len(np.unique(left)) > 100  # many positions


def test_fashion_mnist_folder_is_configurable(tmp_path):
    """GREG_OOD_FASHION_MNIST_DIR replaces the Debian package folder as the place the download stage looks in."""
    import os
    import subprocess
    import sys

    code = ("from greg_ood.data import sources as S; "
            "print(S.FMNIST_DIR); print(S.DATASETS['fashion_mnist'].sources[0].system_dirs)")
    env = {**os.environ, "GREG_OOD_FASHION_MNIST_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == str(tmp_path) and str(tmp_path) in out.splitlines()[1]
