"""The dataset registry: where every file comes from (URLs in order of preference, checksum, size), what each dataset
is (role, benchmark, splits) and which preparation options it accepts.

Checksums are those published by the dataset loaders of torchvision, pytorch-ood and detectors.
A :class:`Source` whose ``checksum_confirmed`` is False carries a value nobody has confirmed against the real file
(Places365 ``test_256.tar``): a mismatch there is reported as a warning and the measured checksum is recorded.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("greg_ood.data")

#: environment variable naming a JSON file of replacement sources (a local mirror); see :func:`source_override`
SOURCES_ENV = "GREG_OOD_SOURCES"

#: where to look for Fashion-MNIST's gzip files when ``dpkg -L dataset-fashion-mnist`` finds nothing: the Debian
#: package's install folder unless ``GREG_OOD_FASHION_MNIST_DIR`` names another (e.g. a copy on a non-Debian host)
FMNIST_DIR = os.environ.get("GREG_OOD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Source:
    """One downloadable file."""

    filename: str
    urls: tuple[str, ...]
    md5: Optional[str] = None
    sha256: Optional[str] = None
    #: exact size in bytes where published; only used for messages and to discard an over-long ``.part``
    size: Optional[int] = None
    approx_size: str = ""
    checksum_confirmed: bool = True
    #: sha256 of the gunzipped content: accepted instead of ``md5`` for repackaged copies (Debian recompresses)
    content_sha256: Optional[str] = None
    #: names of Debian packages whose files may hold this source (looked up with ``dpkg -L``)
    system_packages: tuple[str, ...] = ()
    #: folders checked for the file when dpkg is not available
    system_dirs: tuple[str, ...] = ()
    #: extra places (not URLs) worth mentioning when a manual download is needed
    alternatives: tuple[str, ...] = ()
    #: False: only a local copy is possible (ImageNet)
    downloadable: bool = True

    @property
    def checksum(self) -> tuple[str, str]:
        if self.sha256:
            return "sha256", self.sha256
        if self.md5:
            return "md5", self.md5
        return "none", ""

    def describe_checksum(self) -> str:
        algo, value = self.checksum
        return f"{algo} {value}" if value else "no published checksum"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    role: str  # "id" | "aux" | "ood" | "id+aux"
    benchmark: str  # "mini" | "cifar" | "imagenet"
    splits: tuple[str, ...]
    builder: str  # key of greg_ood.data.registry.BUILDERS
    sources: tuple[Source, ...] = ()
    kind: str = "array"  # "array": <split>.images.npy + labels; "files": <split>.files.json
    #: option name -> default value (unknown option keys are an error naming these)
    options: dict[str, Any] = field(default_factory=dict)
    #: expected image count per split for the default options (a difference is recorded as a warning)
    expected_counts: dict[str, int] = field(default_factory=dict)
    #: the raw/<raw_group>/ folder holding the downloads (datasets sharing an archive share the folder)
    raw_group: Optional[str] = None
    transform: str = ""
    description: str = ""

    @property
    def raw_name(self) -> str:
        return self.raw_group or self.name


#: options every downloadable dataset accepts (merged into each spec's own)
DOWNLOAD_OPTIONS: dict[str, Any] = {
    "mirrors": {},  # {filename: [url, ...]} tried after the built-in URLs
    "retries": 4,  # attempts per URL (exponential back-off between attempts)
    "timeout": 60,  # seconds without data before an attempt is abandoned
}

_DROPBOX = "https://www.dropbox.com/s"


def _mos(name: str, fname: str, md5: str) -> Source:
    return Source(fname, (f"https://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset/{fname}",
                          f"http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset/{fname}"),
                  md5=md5, approx_size="about 0.5-1 GB",
                  alternatives=("README of deeplearning-wisc/large_scale_ood (MOS) for the current links",))


_FMNIST_MD5 = {  # torchvision FashionMNIST.resources (the official gzip files)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# sha256 of the decompressed idx files, measured on Debian's dataset-fashion-mnist (its .gz files are recompressed,
# so their md5 differs from the official one while the content is the same idx data)
_FMNIST_CONTENT = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


def _fmnist(fname: str) -> Source:
    return Source(fname, (f"https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/{fname}",
                          f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{fname}"),
                  md5=_FMNIST_MD5[fname], content_sha256=_FMNIST_CONTENT[fname],
                  system_packages=("dataset-fashion-mnist",), system_dirs=(FMNIST_DIR,))


_DTD = Source("dtd-r1.0.1.tar.gz", ("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",),
              md5="fff73e5086ae6bdbea199a49dfb8a4c1", approx_size="about 625 MB")
_PLACES = "data.csail.mit.edu/places/places365"

#: Google Drive file ids of OpenOOD's download script (``download_id_dict`` of its scripts/download/download.py)
OPENOOD_GDRIVE_IDS = {
    "benchmark_imglist.zip": "1lI1j0_fDDvjIt9JlWAw09X8ks-yrR_H1",
    "tin597.zip": "1R0d8zBcUxWNXz6CPXanobniiIfQbpKzn",
    "tin.zip": "1PZ-ixyx52U989IKsMA2OT-24fToTrelC",
    "mnist.zip": "1CCHAGWqA1KJTFFswuF9cbhmB-j98Y1Sb",
    "places365.zip": "1Ec-LRSTf6u5vEctKX9vRp9OA6tqnJ0Ay",
}


def _openood(fname: str, approx: str) -> Source:
    """One of OpenOOD's Google Drive files: the plain download URL, then the one that skips the virus-scan page of
    large files. OpenOOD publishes no checksums: the file is used as downloaded and its sha256 is recorded in the
    manifest (pin it with a ``$GREG_OOD_SOURCES`` entry)."""
    fid = OPENOOD_GDRIVE_IDS[fname]
    urls = (f"https://drive.google.com/uc?export=download&id={fid}",
            f"https://drive.usercontent.google.com/download?id={fid}&export=download&confirm=t")
    return Source(fname, urls, approx_size=approx,
                  alternatives=("OpenOOD's scripts/download/download.py (gdown) fetches the same file",))


#: OpenOOD's image lists of every benchmark (one archive shared by the OpenOOD datasets; no published checksum)
_OPENOOD_LISTS = _openood("benchmark_imglist.zip", "size not published (text lists; a few MB expected)")
#: name, image archive, approximate size, expected counts per split (OpenOOD v1.5's benchmark description as we
#: recall it, unverified offline: a difference is only a manifest warning), description
_OPENOOD_TESTS = (
    ("openood_tin", "tin.zip", "size not published (Tiny ImageNet's held-out 64x64 JPEGs; tens of MB expected)",
     {"cifar10": 7793, "cifar100": 7793},
     "Tiny ImageNet's held-out images in OpenOOD's near-OOD list (one split per CIFAR benchmark's list)"),
    ("openood_mnist", "mnist.zip", "size not published (70,000 28x28 images; tens of MB expected)",
     {"cifar10": 70000, "cifar100": 70000}, "MNIST, all 70,000 images (OpenOOD's far-OOD list)"),
    ("openood_places365", "places365.zip", "about 2 GB (Places365 validation images at 256x256)",
     {"cifar10": 35195, "cifar100": 35195},
     "Places365 images of OpenOOD's far-OOD list (one split per CIFAR benchmark's list)"),
)

_SPECS = [
    # ---------------------------------------------------------------- offline mini suite
    DatasetSpec("fashion_mnist", "id", "mini", ("train", "test"), "fashion_mnist",
                tuple(_fmnist(f) for f in _FMNIST_MD5),
                expected_counts={"train": 60000, "test": 10000},
                description="Fashion-MNIST, all 10 classes, 28x28x1 (the suite picks ID / near-OOD classes at load)"),
    DatasetSpec("skimage_crops", "aux", "mini", ("train",), "skimage_crops",
                options={"count": 50000, "seed": 0, "min_size": 24, "max_size": 256},
                expected_counts={"train": 50000},
                description="seeded random crops (size, position, flips) of scikit-image's bundled photographs, "
                            "grayscale 28x28; brick/grass/gravel and the LFW faces are excluded (OOD test sets)"),
    DatasetSpec("digits", "ood", "mini", ("test",), "digits", expected_counts={"test": 1797},
                description="scikit-learn's bundled 8x8 digits, 0..16 mapped to 0..255, resized to 28x28"),
    DatasetSpec("textures", "ood", "mini", ("test",), "textures",
                options={"count": 2000, "seed": 1, "min_size": 24, "max_size": 256},
                expected_counts={"test": 2000},
                description="seeded random crops of scikit-image's brick, grass and gravel, 28x28"),
    DatasetSpec("faces", "ood", "mini", ("test",), "faces", expected_counts={"test": 100},
                description="the 100 face images of scikit-image's LFW subset (25x25), resized to 28x28"),
    DatasetSpec("gaussian_noise", "ood", "mini", ("test",), "gaussian_noise",
                options={"count": 2000, "seed": 2, "mean": 127.5, "std": 64.0}, expected_counts={"test": 2000},
                description="i.i.d. Gaussian pixels, clipped to [0, 255]"),
    DatasetSpec("uniform_noise", "ood", "mini", ("test",), "uniform_noise",
                options={"count": 2000, "seed": 3}, expected_counts={"test": 2000},
                description="i.i.d. uniform pixels in [0, 255]"),
    # ---------------------------------------------------------------- CIFAR benchmark
    DatasetSpec("cifar10", "id", "cifar", ("train", "test"), "cifar10",
                (Source("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                        md5="c58f30108f718f92721af3b95e74349a", size=170498071),),
                expected_counts={"train": 50000, "test": 10000}, transform="none (32x32)",
                description="CIFAR-10 (pickled channel-planar batches)"),
    DatasetSpec("cifar100", "id", "cifar", ("train", "test"), "cifar100",
                (Source("cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                        md5="eb9058c3a382ffc7106e4002c42a8d85", approx_size="about 169 MB"),),
                expected_counts={"train": 50000, "test": 10000}, transform="none (32x32)",
                description="CIFAR-100, 100 fine classes"),
    DatasetSpec("tinyimages300k", "aux", "cifar", ("train",), "tinyimages300k",
                (Source("300K_random_images.npy",
                        ("https://people.eecs.berkeley.edu/~hendrycks/300K_random_images.npy",),
                        md5="64ca64357de98351f28454274a112dc3", approx_size="about 922 MB"),),
                expected_counts={"train": 300000}, transform="none (32x32)",
                description="300K Random Images (subset of the withdrawn 80M Tiny Images; not redistributed)"),
    DatasetSpec("dtd", "ood", "cifar", ("test",), "dtd", (_DTD,), expected_counts={"test": 5640},
                transform="Resize(32) -> CenterCrop(32)", description="Describable Textures, all 5,640 images"),
    DatasetSpec("svhn", "ood", "cifar", ("test",), "svhn",
                (Source("test_32x32.mat", ("https://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                                           "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"),
                        md5="eb5a983be6a315427106f1b164d9cef3", approx_size="about 64 MB"),),
                expected_counts={"test": 26032}, transform="none (32x32)", description="SVHN test split"),
    DatasetSpec("places365", "ood", "cifar", ("test",), "places365",
                (Source("val_256.tar", (f"https://{_PLACES}/val_256.tar", f"http://{_PLACES}/val_256.tar"),
                        md5="e27b17d8d44f4af9a78502beb927f808", approx_size="about 2.1 GB",
                        alternatives=("OpenOOD's Google-Drive copy, id 1Ec-LRSTf6u5vEctKX9vRp9OA6tqnJ0Ay "
                                      "(a different archive layout: unpack it and re-pack the 36,500 JPEGs as "
                                      "val_256/*.jpg into val_256.tar)",)),
                 Source("test_256.tar", (f"https://{_PLACES}/test_256.tar", f"http://{_PLACES}/test_256.tar"),
                        md5="f532f6ad7b582262a2ec8009075e186b", approx_size="about 4.4 GB",
                        checksum_confirmed=False)),
                options={"places_source": "val_256", "count": 10000, "seed": 0},
                expected_counts={"test": 10000}, transform="Resize(32) -> CenterCrop(32)",
                description="Places365 256x256, a seeded subset (file list in the manifest)"),
    DatasetSpec("lsun_crop", "ood", "cifar", ("test",), "lsun_crop",
                (Source("LSUN.tar.gz", (f"{_DROPBOX}/raw/fhtsw1m3qxlwj6h/LSUN.tar.gz",
                                        f"{_DROPBOX}/fhtsw1m3qxlwj6h/LSUN.tar.gz?dl=1"),
                        md5="458a0a0ab8e5f1cb4516d7400568e460", approx_size="about 17 MB",
                        alternatives=("Hugging Face dataset detectors/lsun_c-ood (parquet; export the images "
                                      "to LSUN/test/*.jpg and tar.gz them)",)),),
                expected_counts={"test": 10000}, transform="CenterCrop(32)", description="LSUN-Crop (ODIN)"),
    DatasetSpec("lsun_resize", "ood", "cifar", ("test",), "lsun_resize",
                (Source("LSUN_resize.tar.gz", (f"{_DROPBOX}/raw/moqh2wh8696c3yl/LSUN_resize.tar.gz",
                                               f"{_DROPBOX}/moqh2wh8696c3yl/LSUN_resize.tar.gz?dl=1"),
                        md5="278b7b31c8cb7e804a1465a8ce03a2dc", approx_size="about 17 MB",
                        alternatives=("Hugging Face dataset detectors/lsun_r-ood",)),),
                expected_counts={"test": 10000}, transform="none (32x32)", description="LSUN-Resize (ODIN)"),
    DatasetSpec("isun", "ood", "cifar", ("test",), "isun",
                (Source("iSUN.tar.gz", (f"{_DROPBOX}/raw/ssz7qxfqae0cca5/iSUN.tar.gz",
                                        f"{_DROPBOX}/ssz7qxfqae0cca5/iSUN.tar.gz?dl=1"),
                        md5="be77b0f2c26fda898afac5f99645ee70", approx_size="about 15 MB",
                        alternatives=("Hugging Face dataset detectors/isun-ood",)),),
                expected_counts={"test": 8925}, transform="none (32x32)", description="iSUN (ODIN)"),
    # ---------------------------------------------------------------- OpenOOD v1.5 (image lists; openood_lists.py)
    DatasetSpec("tin597", "aux", "cifar", ("train",), "tin597", (_OPENOOD_LISTS, _openood("tin597.zip", "size not "
                "published (ImageNet images of 597 classes at 64x64; recorded at download)")),
                options={"imglist": "cifar10"}, raw_group="openood", transform="Resize(32) -> CenterCrop(32)",
                description="TIN-597: ImageNet-1K classes outside Tiny ImageNet and the CIFAR test OOD sets, "
                            "64x64 like Tiny ImageNet (OpenOOD v1.5's outlier-exposure set; train_tin597.txt)"),
    *(DatasetSpec(name, "ood", "cifar", ("cifar10", "cifar100"), "openood_test", (_OPENOOD_LISTS,
                                                                                 _openood(fname, size)),
                  expected_counts=counts, raw_group="openood", transform="Resize(32) -> CenterCrop(32)",
                  description=desc)
      for name, fname, size, counts, desc in _OPENOOD_TESTS),
    # ---------------------------------------------------------------- ImageNet benchmark (file lists)
    DatasetSpec("imagenet", "id+aux", "imagenet", ("train", "val", "aux"), "imagenet",
                (Source("ILSVRC2012_img_train.tar", (), md5="1d675b47d978889d74fa0da5fadfb00e", downloadable=False,
                        approx_size="138 GB"),
                 Source("ILSVRC2012_img_val.tar", (), md5="29b22e2961454d5413ddabcf34fc5622", downloadable=False,
                        approx_size="6.3 GB"),
                 Source("ILSVRC2012_devkit_t12.tar.gz", (), md5="fa75699e90414af021442c21a62c3abf",
                        downloadable=False)),
                kind="files", options={"imagenet_root": None, "num_classes": 10, "extract_dir": None},
                transform="train: RandomResizedCrop(224)+flip; test: Resize(256)->CenterCrop(224)",
                description="ILSVRC2012 (user-supplied): ID = the K classes of the RandomState(1993) rule, "
                            "train/val file lists; aux = training images of the other 1000-K classes"),
    DatasetSpec("inaturalist", "ood", "imagenet", ("test",), "mos", (_mos("inaturalist", "iNaturalist.tar.gz",
                                                                          "5be6ea8aa027d7b631916427b32cb335"),),
                kind="files", options={"count": 1000, "seed": 0}, expected_counts={"test": 1000},
                transform="Resize(256) -> CenterCrop(224)", description="iNaturalist (MOS subset), seeded 1000"),
    DatasetSpec("sun", "ood", "imagenet", ("test",), "mos", (_mos("sun", "SUN.tar.gz",
                                                                  "8469c3ada62211477954ec1be53b12d0"),),
                kind="files", options={"count": 1000, "seed": 0}, expected_counts={"test": 1000},
                transform="Resize(256) -> CenterCrop(224)", description="SUN (MOS subset), seeded 1000"),
    DatasetSpec("places", "ood", "imagenet", ("test",), "mos", (_mos("places", "Places.tar.gz",
                                                                     "b5cb5eba2754ae2a28beea8718db699a"),),
                kind="files", options={"count": 1000, "seed": 0}, expected_counts={"test": 1000},
                transform="Resize(256) -> CenterCrop(224)", description="Places (MOS subset), seeded 1000"),
    DatasetSpec("dtd_imagenet", "ood", "imagenet", ("test",), "mos", (_DTD,), kind="files", raw_group="dtd",
                options={"count": 1000, "seed": 0}, expected_counts={"test": 1000},
                transform="Resize(256) -> CenterCrop(224)", description="Describable Textures, seeded 1000"),
]

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}


def option_defaults(spec: DatasetSpec) -> dict[str, Any]:
    out = dict(spec.options)
    if any(s.downloadable for s in spec.sources):
        out.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in DOWNLOAD_OPTIONS.items()})
    return out


def resolve_options(spec: DatasetSpec, options: Optional[dict]) -> dict[str, Any]:
    """Defaults overlaid with ``options``; an unknown key raises ``ValueError`` naming the accepted ones."""
    out = option_defaults(spec)
    for k, v in (options or {}).items():
        if k not in out:
            raise ValueError(f"datasets.{spec.name}: unknown option {k!r}; accepted: {sorted(out)}")
        out[k] = v
    return out


_OVERRIDE_KEYS = {"filename", "url", "urls", "md5", "sha256", "size"}


def source_override(name: str, env: Optional[dict] = None) -> dict[str, Source]:
    """Replacement sources for dataset ``name`` from the JSON file named by ``$GREG_OOD_SOURCES``; {} when unset.

    The file maps dataset names to lists of files, each ``{"filename", "url" or "urls", "md5" or "sha256",
    "size" (optional)}``: a local mirror, or the test servers of the dress rehearsal. A listed file replaces the
    built-in source of the same file name (its URLs and checksum); datasets the file does not name keep theirs.
    A malformed entry raises ``ValueError`` naming the file and the key. Every use is logged as a warning, so a run
    that read from a mirror says so in its log."""
    env = os.environ if env is None else env
    path = env.get(SOURCES_ENV, "")
    if not path:
        return {}
    doc = _read_override_file(Path(path))
    if name not in doc:
        return {}
    entries = doc[name]
    where = f"{path}: {name}"
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: expected a non-empty list of files, got {entries!r}")
    replaced = [_override_entry(DATASETS[name], e, f"{where}[{i}]") for i, e in enumerate(entries)]
    out = {src.filename: src for src in replaced}
    log.warning("%s: using source override from %s (%s) instead of the built-in URLs and checksums", name, path,
                ", ".join(f"{s.filename} <- {s.urls[0]}" for s in out.values()))
    return out


def _read_override_file(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{SOURCES_ENV}={path}: no such file (unset the variable to use the built-in sources)")
    except json.JSONDecodeError as e:
        raise ValueError(f"{SOURCES_ENV}={path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected an object mapping dataset names to lists of files")
    unknown = sorted(k for k in doc if k not in DATASETS or not any(s.downloadable for s in DATASETS[k].sources))
    if unknown:
        known = sorted(k for k, v in DATASETS.items() if any(s.downloadable for s in v.sources))
        raise ValueError(f"{path}: {unknown} are not downloadable datasets; the file may name: {known}")
    return doc


def _override_entry(spec: DatasetSpec, e: Any, where: str) -> Source:
    if not isinstance(e, dict):
        raise ValueError(f"{where}: expected an object with filename, url and md5 or sha256, got {e!r}")
    extra = sorted(set(e) - _OVERRIDE_KEYS)
    if extra:
        raise ValueError(f"{where}: unknown key(s) {extra}; accepted: {sorted(_OVERRIDE_KEYS)}")
    names = [s.filename for s in spec.sources]
    fname = e.get("filename")
    if fname not in names:
        raise ValueError(f"{where}.filename: {fname!r} is not a file of dataset {spec.name!r}; expected one of {names}")
    urls = e.get("urls", [e["url"]] if "url" in e else [])
    if isinstance(urls, str) or not urls or not all(isinstance(u, str) and u for u in urls):
        raise ValueError(f"{where}: give 'url' (a string) or 'urls' (a non-empty list of strings)")
    md5, sha = e.get("md5"), e.get("sha256")
    if not (md5 or sha):
        raise ValueError(f"{where}: a checksum is required ('md5' or 'sha256'); the download is verified against it")
    for key, value, n in (("md5", md5, 32), ("sha256", sha, 64)):
        if value is not None and (not isinstance(value, str) or len(value) != n
                                  or any(c not in "0123456789abcdef" for c in value.lower())):
            raise ValueError(f"{where}.{key}: {value!r} is not a {n}-digit hex digest")
    size = e.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise ValueError(f"{where}.size: {size!r} is not a positive integer (bytes)")
    return Source(fname, tuple(urls), md5=md5.lower() if md5 else None, sha256=sha.lower() if sha else None,
                  size=size, approx_size="from the source override")


#: the synthetic-noise datasets (their images are generated noise, not photographs): the report's noise finding
#: studies the OOD sets built from them, and dvcgen gives that finding's stage their files as deps
NOISE_DATASETS = ("gaussian_noise", "uniform_noise")
