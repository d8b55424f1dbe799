"""$GREG_OOD_SOURCES: a JSON file that replaces the built-in URLs and checksums of named datasets (a local mirror).
The dress rehearsal (test_paper_suites_e2e.py) uses it across `dvc repro` subprocesses; here its rules are checked."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from data_fixtures import md5, svhn_mat
from greg_ood import data as D
from greg_ood.data.sources import SOURCES_ENV, source_override


def _override(tmp_path, monkeypatch, doc) -> str:
    f = tmp_path / "mirror.json"
    f.write_text(json.dumps(doc))
    monkeypatch.setenv(SOURCES_ENV, str(f))
    return str(f)


def test_override_serves_the_dataset_from_the_mirror_and_says_so(server, tmp_path, monkeypatch, caplog):
    blob, exp = svhn_mat()
    url = server.add("/mirror/test_32x32.mat", blob)
    path = _override(tmp_path, monkeypatch, {"svhn": [{"filename": "test_32x32.mat", "url": url, "md5": md5(blob),
                                                       "size": len(blob)}]})
    with caplog.at_level(logging.WARNING, logger="greg_ood.data"):
        man = D.prepare("svhn", data_dir=tmp_path / "d", options={"retries": 1, "timeout": 5}, progress=False)
    assert f"using source override from {path}" in caplog.text
    assert man["sources"][0]["url_used"] == url and man["sources"][0]["md5"] == md5(blob)
    np.testing.assert_array_equal(D.load_split(tmp_path / "d", "svhn", "test").images, exp["images"])
    assert server.log == [("/mirror/test_32x32.mat", "")]
    assert source_override("cifar10") == {}  # datasets the file does not name keep the built-in sources


def test_override_checksum_is_enforced(server, tmp_path, monkeypatch):
    blob, _ = svhn_mat()
    url = server.add("/mirror/test_32x32.mat", blob)
    _override(tmp_path, monkeypatch, {"svhn": [{"filename": "test_32x32.mat", "url": url, "md5": "0" * 32}]})
    with pytest.raises(D.ManualDownloadRequired, match="md5 " + "0" * 32):
        D.prepare("svhn", data_dir=tmp_path / "d", options={"retries": 1, "timeout": 5}, progress=False)


def test_unset_means_builtin_sources(monkeypatch):
    monkeypatch.delenv(SOURCES_ENV, raising=False)
    assert source_override("svhn") == {}


@pytest.mark.parametrize("doc, match", [
    ({"svnh": []}, r"\['svnh'\] are not downloadable datasets"),
    ({"imagenet": []}, r"\['imagenet'\] are not downloadable"),
    ({"svhn": []}, r"svhn: expected a non-empty list"),
    ({"svhn": [{"filename": "train_32x32.mat", "url": "http://x/a", "md5": "0" * 32}]},
     r"svhn\[0\]\.filename: 'train_32x32\.mat' is not a file of dataset 'svhn'; expected one of \['test_32x32\.mat'\]"),
    ({"svhn": [{"filename": "test_32x32.mat", "url": "http://x/a"}]}, r"svhn\[0\]: a checksum is required"),
    ({"svhn": [{"filename": "test_32x32.mat", "url": "http://x/a", "md5": "abc"}]}, r"svhn\[0\]\.md5: 'abc' is not"),
    ({"svhn": [{"filename": "test_32x32.mat", "md5": "0" * 32}]}, r"svhn\[0\]: give 'url'"),
    ({"svhn": [{"filename": "test_32x32.mat", "url": "http://x/a", "md5": "0" * 32, "size": -1}]},
     r"svhn\[0\]\.size"),
    ({"svhn": [{"filename": "test_32x32.mat", "url": "http://x/a", "md5": "0" * 32, "mirror": 1}]},
     r"unknown key\(s\) \['mirror'\]"),
])
def test_bad_override_names_the_file_and_the_key(tmp_path, monkeypatch, doc, match):
    path = _override(tmp_path, monkeypatch, doc)
    with pytest.raises(ValueError, match=match) as ei:
        source_override("svhn")
    assert path in str(ei.value)


def test_missing_or_broken_override_file(tmp_path, monkeypatch):
    monkeypatch.setenv(SOURCES_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match=f"{SOURCES_ENV}=.*nope.json: no such file"):
        source_override("svhn")
    (tmp_path / "bad.json").write_text("{")
    monkeypatch.setenv(SOURCES_ENV, str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        source_override("svhn")
