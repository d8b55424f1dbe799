"""Bad data input is detected with a message naming the file: an unreadable image inside an ImageNet class folder
(at preparation for empty files, at the batch loader for truncated ones), a missing ImageNet root, a truncated
archive, a checksum that never matches, and a file-list split changed after preparation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_fixtures import image_folder_tarball, md5, source_for, write
from greg_ood import data as D
from greg_ood.data import Source
from greg_ood.data import imagenet as IN
from greg_ood.data.datasets import decode_test, decode_train
from greg_ood.data.images import UnreadableImageError

IDS = IN.id_classes(10)


def _jpeg_bytes(rng, h=48, w=40) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def broken_imagenet(tmp_path):
    """A tiny extracted ILSVRC2012 tree (10 ID classes, 2 train + 1 val image each) with one truncated JPEG and
    one zero-byte file in train class folders."""
    rng = np.random.RandomState(0)
    root = tmp_path / "ilsvrc"
    for w in IDS:
        for k in range(2):
            write(root / "train" / w / f"{w}_{k}.JPEG", _jpeg_bytes(rng))
        write(root / "val" / w / f"ILSVRC2012_val_{w}.JPEG", _jpeg_bytes(rng))
    good = (root / "train" / IDS[3] / f"{IDS[3]}_1.JPEG").read_bytes()
    truncated = write(root / "train" / IDS[3] / f"{IDS[3]}_1.JPEG", good[: len(good) // 3])
    empty = write(root / "train" / IDS[5] / f"{IDS[5]}_empty.JPEG", b"")
    return root, truncated, empty


def test_unreadable_images_in_imagenet_folder_are_named(broken_imagenet, tmp_path):
    root, truncated, empty = broken_imagenet
    data = tmp_path / "data"
    man = D.prepare("imagenet", data_dir=data, options={"imagenet_root": str(root), "num_classes": 10},
                    progress=False)
    # preparation: the empty file is left out and named in a warning (and the manifest)
    assert any(str(empty) in w and "empty" in w for w in man["warnings"]), man["warnings"]
    assert man["empty_files_skipped"] == [str(empty)]
    tr = D.load_split(data, "imagenet", "train")
    assert len(tr) == 20 and str(empty.relative_to(root)) not in tr.files
    # the truncated JPEG (non-empty) is listed; decoding it names the file instead of a bare PIL error
    assert truncated.relative_to(root).as_posix() in tr.files
    for decode in (lambda p: decode_test(p), lambda p: decode_train(p, 0)):
        with pytest.raises(UnreadableImageError) as ei:
            decode(truncated)
        assert str(truncated) in str(ei.value) and "corrupt or truncated" in str(ei.value)
    with pytest.raises(UnreadableImageError, match="empty"):
        decode_test(empty)
    # the batch loader (main process and DataLoader worker) stops with the path in the message
    pos = tr.files.index(truncated.relative_to(root).as_posix())
    for workers in (0, 1):
        src = D.FileListSource(tr, batch_size=len(tr), device="cpu", mean=IN.IMAGENET_MEAN, std=IN.IMAGENET_STD,
                               train=False, num_workers=workers, persistent_workers=False)
        with pytest.raises(Exception) as ei:
            src.batch(0, 0)
        assert str(truncated) in str(ei.value), (workers, str(ei.value)[-500:])
        src.close()
    with pytest.raises(UnreadableImageError, match=str(truncated)):
        next(D.iter_eval(tr.images[pos:pos + 1], batch_size=1, device="cpu", mean=IN.IMAGENET_MEAN,
                         std=IN.IMAGENET_STD, num_workers=0))
    # an image deleted after preparation is named too
    gone = root / tr.files[0]
    gone.unlink()
    with pytest.raises(UnreadableImageError, match="missing"):
        tr.images[0]


def test_missing_imagenet_root_names_the_path(tmp_path):
    missing = tmp_path / "no" / "ILSVRC2012"
    with pytest.raises(FileNotFoundError) as ei:
        D.prepare("imagenet", data_dir=tmp_path / "d", options={"imagenet_root": str(missing)}, progress=False)
    msg = str(ei.value)
    assert str(missing) in msg and "does not exist" in msg and "train/<wnid>/" in msg
    assert not (tmp_path / "d" / "prepared" / "imagenet").exists()
    empty_root = tmp_path / "empty_root"
    (empty_root / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as ei:
        D.prepare("imagenet", data_dir=tmp_path / "d", options={"imagenet_root": str(empty_root)}, progress=False)
    assert str(empty_root) in str(ei.value) and "ILSVRC2012_img_val.tar" in str(ei.value)


def _inat_blob(n=8):
    rng = np.random.RandomState(2)
    return image_folder_tarball({f"iNaturalist/images/{i:05d}.jpg": rng.randint(0, 256, (40, 40, 3))
                                 .astype(np.uint8) for i in range(n)})


def test_truncated_archive_is_named(tmp_path):
    blob = _inat_blob()
    raw = write(tmp_path / "raw" / "inaturalist" / "iNaturalist.tar.gz", blob[: len(blob) // 2])
    # a published checksum nobody confirmed: the copy is used, and the truncation surfaces when reading it
    src = Source("iNaturalist.tar.gz", ("http://127.0.0.1:9/x",), md5="0" * 32, checksum_confirmed=False)
    with pytest.raises(D.PreparedDataError) as ei:
        D.prepare("inaturalist", data_dir=tmp_path, options={"count": 3, "retries": 1}, progress=False,
                  sources={src.filename: src})
    msg = str(ei.value)
    assert str(raw) in msg and "truncated or corrupt" in msg and "dvc repro download@inaturalist" in msg
    assert not (tmp_path / "prepared" / "inaturalist").exists()
    # with a confirmed checksum a truncated copy never gets that far: it is moved aside, named, and re-fetched
    good = source_for("iNaturalist.tar.gz", blob, ["http://127.0.0.1:9/x"])
    with pytest.raises(D.ManualDownloadRequired) as ei:
        D.fetch(good, raw.parent, dataset="inaturalist", progress=False, retries=1, timeout=2)
    msg = str(ei.value)
    assert f"the copy at {raw} failed verification" in msg and md5(blob) in msg
    assert raw.with_name(raw.name + ".bad").read_bytes() == blob[: len(blob) // 2]


def test_checksum_that_never_matches_names_the_file(server, tmp_path):
    blob = _inat_blob()
    url = server.add("/n/iNaturalist.tar.gz", blob)
    server.modes["/n/iNaturalist.tar.gz"] = ["corrupt"] * 4
    src = source_for("iNaturalist.tar.gz", blob, [url])
    with pytest.raises(D.ManualDownloadRequired) as ei:
        D.prepare("inaturalist", data_dir=tmp_path, options={"count": 3, "retries": 2, "timeout": 5},
                  progress=False, sources={src.filename: src})
    msg = str(ei.value)
    dest = tmp_path / "raw" / "inaturalist" / "iNaturalist.tar.gz"
    assert "'iNaturalist.tar.gz'" in msg and "checksum mismatch" in msg and md5(blob) in msg and str(dest) in msg
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_file_list_replaced_after_preparation_is_named(server, tmp_path):
    blob = _inat_blob()
    srcs = {"iNaturalist.tar.gz": source_for("iNaturalist.tar.gz", blob, [server.add("/n/i.tar.gz", blob)])}
    D.prepare("inaturalist", data_dir=tmp_path, options={"count": 4, "seed": 0, "retries": 1}, progress=False,
              sources=srcs)
    fl = tmp_path / "prepared" / "inaturalist" / "test.files.json"
    doc = json.loads(fl.read_text())
    doc["files"][0], doc["files"][1] = doc["files"][1], doc["files"][0]  # same size, other order
    fl.write_text(json.dumps(doc))
    with pytest.raises(D.PreparedDataError) as ei:
        D.load_split(tmp_path, "inaturalist", "test")
    assert str(fl) in str(ei.value) and "changed after preparation" in str(ei.value)
    fl.write_text(json.dumps(doc)[:-10])
    with pytest.raises(D.PreparedDataError, match="truncated or replaced") as ei:
        D.load_split(tmp_path, "inaturalist", "test")
    assert str(fl) in str(ei.value) and "dvc repro download@inaturalist" in str(ei.value)


def test_same_size_change_inside_a_prepared_array_is_caught(tmp_path):
    """A byte flipped in place between the sampled windows of the fast probe (same size, same probe) was loaded
    silently; files up to FULL_CHECK_BYTES now get their whole sha256 checked on every load."""
    from greg_ood.data import build

    D.prepare("uniform_noise", data_dir=tmp_path, options={"count": 2000, "seed": 3}, progress=False)
    arr = tmp_path / "prepared" / "uniform_noise" / "test.images.npy"
    size = arr.stat().st_size
    assert size > build.PROBE_CHUNKS * build.PROBE_BYTES  # the probe samples windows: room between them
    probe_before = build.probe_hash(arr)
    step = (size - build.PROBE_BYTES) // (build.PROBE_CHUNKS - 1)
    pos = build.PROBE_BYTES + (step - build.PROBE_BYTES) // 2  # between the first two windows
    with open(arr, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))
    assert build.probe_hash(arr) == probe_before  # the old fast check could not see it
    with pytest.raises(D.PreparedDataError, match="sha256 differs") as ei:
        D.load_split(tmp_path, "uniform_noise", "test")
    assert str(arr) in str(ei.value) and "dvc repro download@uniform_noise" in str(ei.value)
