"""Downloader: resume, re-fetch on bad checksum, mirrors, HTML pages, unreachable hosts, manual placement —
against a local HTTP server on 127.0.0.1 (ephemeral port, shut down after each test)."""
from __future__ import annotations

import os

import pytest

from data_fixtures import closed_port_url, md5, source_for
from greg_ood.data import download as DL
from greg_ood.data import ManualDownloadRequired, Source, fetch

PAYLOAD = os.urandom(3 * DL.CHUNK + 12345)  # several read chunks


def _fetch(src, tmp_path, **kw):
    kw.setdefault("timeout", 5)
    kw.setdefault("retries", 3)
    return fetch(src, tmp_path / "raw", dataset="toy", progress=False, **kw)


def test_plain_download_verifies_and_records_origin(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    p = _fetch(source_for("f.bin", PAYLOAD, [url]), tmp_path)
    assert p.read_bytes() == PAYLOAD
    assert not p.with_name("f.bin.part").exists()
    assert url in p.with_name("f.bin.origin").read_text()
    # a second call reuses the verified file without any request
    n = len(server.log)
    assert _fetch(source_for("f.bin", PAYLOAD, [url]), tmp_path) == p
    assert len(server.log) == n


def test_connection_cut_mid_body_is_resumed_with_range(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    server.modes["/f.bin"] = ["cut"]
    p = _fetch(source_for("f.bin", PAYLOAD, [url]), tmp_path)
    assert p.read_bytes() == PAYLOAD
    ranges = [r for path, r in server.log if path == "/f.bin"]
    assert ranges[0] == "" and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0


def test_existing_short_part_is_resumed(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "f.bin.part").write_bytes(PAYLOAD[:1000])
    p = _fetch(source_for("f.bin", PAYLOAD, [url]), tmp_path)
    assert p.read_bytes() == PAYLOAD
    assert server.log == [("/f.bin", "bytes=1000-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    server.modes["/f.bin"] = ["norange"]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "f.bin.part").write_bytes(b"garbage" * 10)
    assert _fetch(source_for("f.bin", PAYLOAD, [url]), tmp_path).read_bytes() == PAYLOAD


def test_wrong_checksum_download_is_refetched(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    server.modes["/f.bin"] = ["corrupt"]
    p = _fetch(source_for("f.bin", PAYLOAD, [url]), tmp_path)
    assert p.read_bytes() == PAYLOAD
    assert len([1 for path, _ in server.log if path == "/f.bin"]) == 2


def test_corrupt_existing_file_is_moved_aside_and_refetched(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "f.bin").write_bytes(PAYLOAD[:-1] + b"X")
    p = _fetch(source_for("f.bin", PAYLOAD, [url]), tmp_path)
    assert p.read_bytes() == PAYLOAD
    assert (raw / "f.bin.bad").exists()


def test_dead_primary_falls_back_to_mirror(server, tmp_path):
    good = server.add("/mirror/f.bin", PAYLOAD)
    server.files["/dead/f.bin"] = PAYLOAD
    server.modes["/dead/f.bin"] = ["404"]
    html = server.add("/html/f.bin", PAYLOAD)
    server.modes["/html/f.bin"] = ["html"]
    src = source_for("f.bin", PAYLOAD, [server.url("/dead/f.bin"), html])
    p = _fetch(src, tmp_path, extra_urls=[good])
    assert p.read_bytes() == PAYLOAD
    assert good in p.with_name("f.bin.origin").read_text()
    # 404 and the HTML page are not retried
    assert [path for path, _ in server.log] == ["/dead/f.bin", "/html/f.bin", "/mirror/f.bin"]


def test_server_errors_are_retried_with_backoff(server, tmp_path):
    url = server.add("/f.bin", PAYLOAD)
    server.modes["/f.bin"] = ["500", "500"]
    sleeps = []
    p = fetch(source_for("f.bin", PAYLOAD, [url]), tmp_path / "raw", progress=False, retries=3, timeout=5,
              backoff=0.5, sleep=sleeps.append)
    assert p.read_bytes() == PAYLOAD and sleeps == [0.5, 1.0]


def test_unreachable_gives_manual_placement_message_and_placed_copy_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(DL, "DEFAULT_BACKOFF", 0.0)
    url = closed_port_url("/dtd.tar.gz")
    src = source_for("dtd.tar.gz", PAYLOAD, [url])
    with pytest.raises(ManualDownloadRequired) as ei:
        _fetch(src, tmp_path, retries=2)
    msg = str(ei.value)
    dest = tmp_path / "raw" / "dtd.tar.gz"
    assert "dtd.tar.gz" in msg and md5(PAYLOAD) in msg and str(dest) in msg and url in msg
    assert "dvc repro download@toy" in msg
    assert not dest.exists() and not dest.with_name("dtd.tar.gz.part").exists()
    # a manually placed wrong copy is rejected (moved aside), a right one is used as is
    dest.write_bytes(b"wrong")
    with pytest.raises(ManualDownloadRequired, match="failed verification"):
        _fetch(src, tmp_path, retries=1)
    dest.write_bytes(PAYLOAD)
    assert _fetch(src, tmp_path, retries=1) == dest


def test_never_downloadable_source_explains(tmp_path):
    src = Source("ILSVRC2012_img_val.tar", (), md5="29b22e2961454d5413ddabcf34fc5622", downloadable=False)
    with pytest.raises(ManualDownloadRequired, match="29b22e2961454d5413ddabcf34fc5622"):
        fetch(src, tmp_path, progress=False)


def test_unconfirmed_checksum_mismatch_warns_but_keeps(server, tmp_path, caplog):
    url = server.add("/t.tar", PAYLOAD)
    src = Source("t.tar", (url,), md5="0" * 32, checksum_confirmed=False)
    p = _fetch(src, tmp_path)
    assert p.read_bytes() == PAYLOAD
    assert "unconfirmed" in caplog.text


def test_repackaged_gzip_accepted_by_content_checksum(tmp_path):
    import gzip
    import hashlib

    content = b"idx-content" * 100
    gz = tmp_path / "raw" / "a.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(content, mtime=1))
    src = Source("a.gz", (closed_port_url(),), md5="f" * 32, content_sha256=hashlib.sha256(content).hexdigest())
    assert DL.verify_file(gz, src)[0]
    assert fetch(src, gz.parent, progress=False) == gz
