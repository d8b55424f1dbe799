"""Helpers for the data tests: a local HTTP file server with failure modes, and small archives in the exact
formats of the real datasets (CIFAR python tarballs, SVHN .mat, image-folder tar.gz, TI-300K .npy, OpenOOD's image
lists and image zips)."""
from __future__ import annotations

import hashlib
import io
import pickle
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from greg_ood.data import Source


class FileServer:
    """Serves ``files`` (url path -> bytes) on 127.0.0.1 with HTTP Range support. ``modes[path]`` is a list of
    per-request behaviours consumed in order: "cut" (promise the whole body, send half, close), "corrupt" (right
    length, wrong bytes), "html" (an HTML page), "404", "500", "norange" (ignore Range, send 200). A positive
    ``delay`` throttles full bodies to ``chunk`` bytes per ``delay`` seconds (so a client can be killed mid-transfer)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, list[str]] = {}
        self.log: list[tuple[str, str]] = []  # (path, Range header)
        self.delay, self.chunk = 0.0, 1 << 16
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                rng = self.headers.get("Range", "")
                server.log.append((path, rng))
                mode = server.modes.get(path, []).pop(0) if server.modes.get(path) else ""
                if path not in server.files or mode == "404":
                    return self._plain(404, b"not found")
                if mode == "500":
                    return self._plain(500, b"oops")
                if mode == "html":
                    return self._plain(200, b"<html><body>sign in</body></html>", "text/html; charset=utf-8")
                body = server.files[path]
                if mode == "corrupt":
                    body = bytes(255 - b for b in body)
                start = 0
                if rng.startswith("bytes=") and mode != "norange":
                    start = int(rng[6:].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(part)))
                if mode == "cut":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(part[: max(1, len(part) // 2)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                if server.delay <= 0:
                    self.wfile.write(part)
                    return
                for i in range(0, len(part), server.chunk):  # throttled: ``chunk`` bytes every ``delay`` s
                    try:
                        self.wfile.write(part[i:i + server.chunk])
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):  # the client was killed
                        self.close_connection = True
                        return
                    time.sleep(server.delay)

            def _plain(self, code, data, ctype="text/plain"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def closed_port_url(name: str = "/x") -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{name}"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def source_for(filename: str, data: bytes, urls, **kw) -> Source:
    return Source(filename, tuple(urls), md5=md5(data), size=len(data), **kw)


# ----------------------------------------------------------------------------------------------------- formats
def _tar_gz(members: dict[str, bytes], compression: str = "gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cifar10_tarball(n_per_batch: int = 6, seed: int = 0) -> tuple[bytes, dict]:
    """A cifar-10-python.tar.gz with 5 train batches + test batch; returns (bytes, expected arrays)."""
    rng = np.random.RandomState(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    members, train_x, train_y = {}, [], []
    for i in range(1, 7):
        hwc = rng.randint(0, 256, size=(n_per_batch, 32, 32, 3)).astype(np.uint8)
        y = rng.randint(0, 10, size=n_per_batch).tolist()
        planar = hwc.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072)
        key = f"data_batch_{i}" if i <= 5 else "test_batch"
        members[f"cifar-10-batches-py/{key}"] = pickle.dumps(
            {"batch_label": key, "labels": y, "data": planar, "filenames": [f"{key}_{j}.png" for j in range(len(y))]},
            protocol=2)
        if i <= 5:
            train_x.append(hwc)
            train_y += y
        else:
            test = (hwc, np.asarray(y))
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {"label_names": names, "num_cases_per_batch": n_per_batch, "num_vis": 3072}, protocol=2)
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    return _tar_gz(members), {"train": (np.concatenate(train_x), np.asarray(train_y)), "test": test,
                              "names": names}


def cifar100_tarball(n: int = 8, seed: int = 1) -> tuple[bytes, dict]:
    rng = np.random.RandomState(seed)
    fine = [f"class{i:03d}" for i in range(100)]
    members, exp = {}, {"names": fine}
    for split in ("train", "test"):
        hwc = rng.randint(0, 256, size=(n, 32, 32, 3)).astype(np.uint8)
        y = rng.randint(0, 100, size=n).tolist()
        members[f"cifar-100-python/{split}"] = pickle.dumps(
            {"data": hwc.transpose(0, 3, 1, 2).reshape(n, 3072), "fine_labels": y,
             "coarse_labels": [v // 5 for v in y], "filenames": [f"{j}.png" for j in range(n)]}, protocol=2)
        exp[split] = (hwc, np.asarray(y))
    members["cifar-100-python/meta"] = pickle.dumps(
        {"fine_label_names": fine, "coarse_label_names": [f"super{i}" for i in range(20)]}, protocol=2)
    return _tar_gz(members), exp


def svhn_mat(n: int = 7, seed: int = 2) -> tuple[bytes, dict]:
    import scipy.io

    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, size=(32, 32, 3, n)).astype(np.uint8)
    y = rng.randint(1, 11, size=(n, 1)).astype(np.uint8)  # 10 means digit 0
    y[0, 0] = 10
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"X": x, "y": y})
    return buf.getvalue(), {"images": x.transpose(3, 0, 1, 2), "labels": y.reshape(-1).astype(np.int64) % 10}


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def image_folder_tarball(layout: dict[str, np.ndarray], compression: str = "gz", fmt: str = "PNG") -> bytes:
    """tar(.gz) of image files: member path -> H×W×3 uint8 array."""
    return _tar_gz({name: png(a, fmt) for name, a in layout.items()}, compression)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------------- paper stand-ins
def _images(rng, names, h: int, w: int) -> dict[str, np.ndarray]:
    return {n: rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8) for n in names}


def standin_archives(n: int = 8, seed: int = 0) -> dict[str, dict[str, bytes]]:
    """dataset -> {file name: bytes}: tiny stand-ins of every downloadable paper dataset, under the real file names,
    in the real container formats and member layouts (CIFAR python pickles, SVHN .mat, TI-300K .npy, tar(.gz) image
    folders with JPEG members where the real archive has them). ``n`` images per split or folder."""
    rng = np.random.RandomState(seed)
    jpeg = lambda layout, compression="gz": image_folder_tarball(layout, compression, "JPEG")  # noqa: E731
    dtd = jpeg({**_images(rng, [f"dtd/images/banded/banded_{i:04d}.jpg" for i in range(n // 2)], 48, 64),
                **_images(rng, [f"dtd/images/zigzagged/zigzagged_{i:04d}.jpg" for i in range(n - n // 2)], 64, 48)})
    out = {
        "cifar10": {"cifar-10-python.tar.gz": cifar10_tarball(n_per_batch=n, seed=seed)[0]},
        "cifar100": {"cifar-100-python.tar.gz": cifar100_tarball(n=5 * n, seed=seed + 1)[0]},
        "tinyimages300k": {"300K_random_images.npy": npy_bytes(
            rng.randint(0, 256, size=(12 * n, 32, 32, 3)).astype(np.uint8))},
        "dtd": {"dtd-r1.0.1.tar.gz": dtd},
        "dtd_imagenet": {"dtd-r1.0.1.tar.gz": dtd},
        "svhn": {"test_32x32.mat": svhn_mat(n=n, seed=seed + 2)[0]},
        "places365": {"val_256.tar": jpeg(_images(rng, [f"val_256/Places365_val_{i:08d}.jpg"
                                                        for i in range(1, 2 * n + 1)], 256, 256), compression="")},
        "lsun_crop": {"LSUN.tar.gz": jpeg(_images(rng, [f"LSUN/test/{i:04d}.jpg" for i in range(n)], 36, 36))},
        "lsun_resize": {"LSUN_resize.tar.gz": jpeg(_images(rng, [f"LSUN_resize/{i:04d}.jpg" for i in range(n)],
                                                           32, 32))},
        "isun": {"iSUN.tar.gz": jpeg(_images(rng, [f"iSUN/iSUN_patches/{i:04d}.jpeg" for i in range(n)], 32, 32))},
    }
    for name, folder in (("inaturalist", "iNaturalist"), ("sun", "SUN"), ("places", "Places")):
        out[name] = {f"{folder}.tar.gz": jpeg(_images(rng, [f"{folder}/images/{i:05d}.jpg" for i in range(n)],
                                                      96, 80))}
    return out


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _flat(rng, h: int, w: int, gray: bool = False) -> np.ndarray:
    """A random flat-colour image (so a resize keeps its pixels exactly: a known answer)."""
    c = rng.randint(0, 256, size=1 if gray else 3).astype(np.uint8)
    return np.broadcast_to(c, (h, w) if gray else (h, w, 3)).copy()


def openood_standins(n: int = 8, seed: int = 0, fmt: str = "JPEG", plant_duplicate: bool = False) -> dict:
    """OpenOOD v1.5 stand-ins: dataset -> {file name: bytes} for tin597 / openood_tin / openood_mnist /
    openood_places365, plus ``"expected"``: {(dataset, split): [flat colour per listed image]}.

    ``benchmark_imglist.zip`` holds ``benchmark_imglist/<cifar10|cifar100>/<list>.txt`` (``<path> <label>`` lines,
    paths relative to ``images_classic/``) and an unrelated list; image zips use both layouts OpenOOD's lists can
    meet: ``tin597.zip`` and ``mnist.zip`` without the top folder (as unpacked into ``images_classic/<name>/``),
    ``tin.zip`` and ``places365.zip`` with it. TIN-597 has 12·n 64×64 images over 3 ImageNet wnids; the test lists
    of cifar100 are one image shorter than cifar10's. ``plant_duplicate``: TIN-597's first image is byte-identical to
    the first image of the cifar10 TIN list."""
    from greg_ood.data.imagenet import sorted_wnids

    rng = np.random.RandomState(seed)
    ext = "png" if fmt == "PNG" else "JPEG"
    enc = lambda a: png(a, fmt)  # noqa: E731
    lists, expected, out = {}, {}, {}
    wnids = sorted_wnids()[:3]
    t597 = {f"tin597/test/{wnids[i % 3]}/{wnids[i % 3]}_{i}.{ext}": _flat(rng, 64, 64) for i in range(12 * n)}
    tin = {f"tin/test/val_{i}.{ext}": _flat(rng, 64, 64) for i in range(n)}
    if plant_duplicate:
        t597[next(iter(t597))] = tin[next(iter(tin))]
    mnist = {f"mnist/test/{i}.png": _flat(rng, 28, 28, gray=True) for i in range(n)}
    places = {f"places365/val/Places365_val_{i:08d}.{ext}": _flat(rng, 256, 256) for i in range(n)}
    for bench in ("cifar10", "cifar100"):
        lists[f"benchmark_imglist/{bench}/train_tin597.txt"] = "".join(f"{p} -1\n" for p in t597)
        expected[("tin597", "train")] = [a[0, 0] for a in t597.values()]
        for name, imgs, fname in (("openood_tin", tin, "test_tin.txt"), ("openood_mnist", mnist, "test_mnist.txt"),
                                  ("openood_places365", places, "test_places365.txt")):
            keep = list(imgs)[: n if bench == "cifar10" else n - 1]
            lists[f"benchmark_imglist/{bench}/{fname}"] = "".join(f"{p} -1\n" for p in keep)
            expected[(name, bench)] = [np.broadcast_to(imgs[p][0, 0], 3) for p in keep]
    lists["benchmark_imglist/cifar10/test_cifar10.txt"] = "cifar10/test/0.png 3\n"
    imglist = _zip({k: v.encode() for k, v in lists.items()})
    strip = lambda d: {k.split("/", 1)[1]: enc(v) for k, v in d.items()}  # noqa: E731
    out["tin597"] = {"benchmark_imglist.zip": imglist, "tin597.zip": _zip(strip(t597))}
    out["openood_tin"] = {"benchmark_imglist.zip": imglist, "tin.zip": _zip({k: enc(v) for k, v in tin.items()})}
    out["openood_mnist"] = {"benchmark_imglist.zip": imglist,
                            "mnist.zip": _zip({k.split("/", 1)[1]: png(v) for k, v in mnist.items()})}
    out["openood_places365"] = {"benchmark_imglist.zip": imglist,
                                "places365.zip": _zip({k: enc(v) for k, v in places.items()})}
    out["expected"] = expected
    return out


def serve_standins(server: FileServer, names, n: int = 8, seed: int = 0) -> dict:
    """Put the stand-ins of ``names`` on ``server``; return the $GREG_OOD_SOURCES document that points at them
    (URL, md5 and size of each file)."""
    archives = {**standin_archives(n, seed), **openood_standins(n, seed)}
    doc = {}
    for name in names:
        doc[name] = [{"filename": fn, "url": server.add(f"/{name}/{fn}", blob), "md5": md5(blob), "size": len(blob)}
                     for fn, blob in archives[name].items()]
    return doc


def ilsvrc_tree(root: Path, id_wnids, other_wnids, per_class: int = 2, seed: int = 0, size=(72, 96)) -> Path:
    """An extracted ILSVRC2012-style folder tree (train/<wnid>/<wnid>_<k>.JPEG for ID and other classes,
    val/<wnid>/ILSVRC2012_val_*.JPEG for the ID classes) of small JPEGs."""
    rng = np.random.RandomState(seed)
    for w in list(id_wnids) + list(other_wnids):
        for k in range(per_class):
            write(root / "train" / w / f"{w}_{k}.JPEG", png(rng.randint(0, 256, size=(*size, 3)).astype(np.uint8),
                                                             "JPEG"))
    for i, w in enumerate(id_wnids):
        write(root / "val" / w / f"ILSVRC2012_val_{i + 1:08d}.JPEG",
              png(rng.randint(0, 256, size=(*size[::-1], 3)).astype(np.uint8), "JPEG"))
    return root
