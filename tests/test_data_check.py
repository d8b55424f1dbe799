"""`python -m greg_ood.data check --suite S`: one table naming every file the suite needs, with its status."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from greg_ood.run import config as C
from greg_ood.data import DATASETS
from greg_ood.data.check import report, suite_datasets

ROOT = Path(__file__).resolve().parents[1]


def _cfg():
    return C.load(ROOT / "params.yaml")


def _raw(data: Path, name: str, i: int = 0) -> tuple[Path, int]:
    spec = DATASETS[name]
    s = spec.sources[i]
    return data / "raw" / spec.raw_name / s.filename, s.size


def test_lists_every_file_of_every_dataset_with_status(tmp_path):
    cfg = _cfg()
    data = tmp_path / "data"
    names = suite_datasets(cfg, "cifar10")
    assert names[:2] == ["cifar10", "tinyimages300k"] and len(names) == 12  # 8 of the paper, 4 more of OpenOOD
    good, size = _raw(data, "cifar10")
    good.parent.mkdir(parents=True)
    with open(good, "wb") as f:  # a sparse file of the published size counts as present
        f.truncate(size)
    short, _ = _raw(data, "tinyimages300k")
    short.parent.mkdir(parents=True)
    short.write_bytes(b"x" * 10)
    (data / "prepared" / "dtd").mkdir(parents=True)
    (data / "prepared" / "dtd" / "manifest.json").write_text(json.dumps({"name": "dtd"}))
    text, bad = report(cfg, "cifar10", data)
    files = [s for n in names for s in DATASETS[n].sources]
    assert len(files) == 16 and len({(DATASETS[n].raw_name, s.filename) for n in names
                                     for s in DATASETS[n].sources}) == 14  # OpenOOD's list archive is shared
    for s in files:  # every file: name, checksum, first URL
        assert s.filename in text and s.describe_checksum() in text and s.urls[0] in text
    rows = {ln.split("|")[3].strip(): ln.split("|")[1].strip() for ln in text.splitlines()[3:-1]}
    assert rows["cifar-10-python.tar.gz"] == "present"
    assert rows["dtd-r1.0.1.tar.gz"] == "prepared"
    assert rows["300K_random_images.npy"] == "present"  # no exact published size: present (verified when used)
    assert rows["val_256.tar"] == "MISSING" and rows["iSUN.tar.gz"] == "MISSING"
    assert sum("benchmark_imglist.zip" in ln for ln in text.splitlines()) == 1  # one row for the shared file
    assert bad == 11 and str(_raw(data, "isun")[0]) in text and "dvc repro report_cifar10" in text


def test_wrong_size_is_flagged(tmp_path):
    data = tmp_path / "data"
    p, size = _raw(data, "cifar10")
    p.parent.mkdir(parents=True)
    p.write_bytes(b"x" * 100)
    text, bad = report(_cfg(), "cifar10", data)
    assert "WRONG SIZE (100 B)" in text and bad == 14


def test_cli_exit_status_and_bad_suite(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["project"]["data_dir"] = str(tmp_path / "data")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    def run(*a):
        return subprocess.run([sys.executable, "-m", "greg_ood.data", "check", "--params", str(params), *a],
                              capture_output=True, text=True, timeout=120)

    r = run("--suite", "cifar10")
    assert r.returncode == 1 and "14 missing or wrong" in r.stdout and r.stdout.count("| MISSING") == 14
    r = run("--suite", "nope")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
