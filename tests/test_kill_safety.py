"""Download+prepare, the evaluate stage's writes and the report's writes are safe to SIGKILL and re-run.

Each test kills a real subprocess (tests/kill_driver.py) with SIGKILL at seeded random points — at a random moment
(mid-transfer, mid-prepare, mid-write loop) or just before its k-th rename of a finished temporary file — and then
requires that (1) no partial file is taken for complete: every file under a final name parses completely and equals
the output of an uninterrupted run, and nothing else present matches the patterns consumers glob for (``*.json``,
``*.npz``, ...), and (2) a re-run leaves exactly the files of an uninterrupted run, byte for byte.
"""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest

import kill_driver as KD
from data_fixtures import cifar10_tarball, md5, source_for
from greg_ood import data as D

DRIVER = Path(__file__).with_name("kill_driver.py")
SEED = 20261122
#: what readers of these folders glob for: a partial file under such a name would be taken for complete
CONSUMER_PATTERNS = ("*.json", "*.npz", "*.npy", "*.csv", "*.md", "*.tex", "*.png", "*.tar.gz")


# ----------------------------------------------------------------------------------------------------- helpers
def _env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _start(args, **env) -> subprocess.Popen:
    """Start the driver and wait for its ``ready`` line (imports and set-up done)."""
    p = subprocess.Popen([sys.executable, str(DRIVER), *map(str, args)], env=_env(**env), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        _, err = p.communicate(timeout=30)
        raise AssertionError(f"driver did not start: {line!r}\n{err[-3000:]}")
    return p


def _kill(p: subprocess.Popen) -> bool:
    """SIGKILL the driver's process group; True when it was still running (the kill landed)."""
    alive = p.poll() is None
    if alive:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    p.stdout.close()
    p.stderr.close()
    return alive


def _wait_self_kill(p: subprocess.Popen) -> None:
    """For KILL_AT_REPLACE runs: the driver SIGKILLs itself."""
    rc = p.wait(timeout=120)
    err = p.stderr.read()
    p.stdout.close()
    p.stderr.close()
    assert rc == -signal.SIGKILL, f"driver exited with {rc}, not by SIGKILL:\n{err[-3000:]}"


def _tree(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (relative POSIX path -> bytes)."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def _parse(rel: str, b: bytes, ref: bytes) -> None:
    """Parse one output file completely by its type (and compare with the uninterrupted run's version)."""
    if rel.endswith(".json"):
        assert json.loads(b.decode()) == json.loads(ref.decode()), rel
    elif rel.endswith(".npz"):
        with np.load(io.BytesIO(b)) as z, np.load(io.BytesIO(ref)) as zr:
            assert sorted(z.files) == sorted(zr.files), rel
            for k in zr.files:
                assert z[k].shape == zr[k].shape and z[k].dtype == zr[k].dtype, (rel, k)
                np.testing.assert_array_equal(z[k], zr[k])
    elif rel.endswith(".csv"):
        import pandas as pd

        got, want = pd.read_csv(io.BytesIO(b)), pd.read_csv(io.BytesIO(ref))
        assert len(got) == len(want) and list(got.columns) == list(want.columns), rel
    elif rel.endswith(".png"):
        from PIL import Image

        with Image.open(io.BytesIO(b)) as im:
            im.load()
            assert im.size == Image.open(io.BytesIO(ref)).size, rel
    elif rel.endswith((".md", ".tex")):
        b.decode("utf-8")
    assert b == ref, f"{rel}: differs from the uninterrupted run ({len(b)} vs {len(ref)} bytes)"


def _check_no_partial(tree: dict[str, bytes], ref: dict[str, bytes], where: str) -> int:
    """Files under final names are complete (== the uninterrupted run's); anything else is not a name a consumer
    would pick up. Returns how many final files were present."""
    present = 0
    for rel, b in tree.items():
        if rel in ref:
            _parse(rel, b, ref[rel])
            present += 1
        else:
            name = rel.rsplit("/", 1)[-1]
            hits = [pat for pat in CONSUMER_PATTERNS if fnmatch(name, pat)]
            assert not hits, f"{where}: leftover {rel!r} matches the consumer pattern {hits[0]!r}"
    return present


# ----------------------------------------------------------------------------------------------------- (b) evaluate
@pytest.fixture(scope="module")
def eval_ref(tmp_path_factory):
    """The evaluate outputs of an uninterrupted run (same seeded model and data as the driver)."""
    outs = KD.eval_outputs()
    d = tmp_path_factory.mktemp("eval_ref")
    KD.write_eval_outputs(d, *outs)
    return outs, _tree(d)


def _eval_points():
    rnd = random.Random(SEED)
    return [("time", round(rnd.uniform(0.05, 0.6), 3)), ("time", round(rnd.uniform(0.05, 0.6), 3)),
            ("replace", rnd.randint(1, 5)), ("replace", rnd.randint(6, 15))]


@pytest.mark.parametrize("kind,at", _eval_points())
def test_evaluate_writes_survive_sigkill(tmp_path, eval_ref, kind, at):
    outs, ref = eval_ref
    assert len(ref) == 5
    out = tmp_path / "run"
    if kind == "time":
        p = _start(["evaluate", out])
        time.sleep(at)
        assert _kill(p), "the write loop ended before the kill"
    else:
        _wait_self_kill(_start(["evaluate", out], KILL_AT_REPLACE=at))
    _check_no_partial(_tree(out), ref, f"evaluate killed at {kind}={at}")
    KD.write_eval_outputs(out, *outs)  # the re-run
    assert _tree(out) == ref


# ----------------------------------------------------------------------------------------------------- (c) report
@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory):
    """Results, ROC points, score arrays, training curves and a certify file laid out as the report stage reads
    them (the realistic synthetic documents of tests/test_report.py), and the uninterrupted report."""
    import test_report as TR
    from greg_ood.report import build_suite_report

    inp = tmp_path_factory.mktemp("report_in")
    docs = TR.mini_docs()
    (inp / "results").mkdir()
    for d in docs:
        (inp / "results" / f"{d['experiment']}.json").write_text(json.dumps(d))
        if d["group"] == "main":
            TR.roc_json(inp / "roc" / d["experiment"] / "roc.json", 0.2)
            TR.scores_npz(inp / "scores" / f"{d['experiment']}.npz")
    for m, g in (("energy", 0.5), ("greg", 0.01)):
        TR.train_csv(inp / "train" / f"mini-{m}-small_cnn-s0.train.csv", g)
    ref_dir = tmp_path_factory.mktemp("report_ref")
    build_suite_report(**KD.report_kwargs(inp, ref_dir))
    return inp, _tree(ref_dir)


def _report_points():
    rnd = random.Random(SEED + 1)
    return [("time", round(rnd.uniform(0.2, 3.0), 3)), ("time", round(rnd.uniform(0.2, 3.0), 3)),
            ("replace", rnd.randint(1, 12)), ("replace", rnd.randint(13, 40))]


@pytest.mark.parametrize("kind,at", _report_points())
def test_report_writes_survive_sigkill(tmp_path, report_inputs, kind, at):
    from greg_ood.report import build_suite_report

    inp, ref = report_inputs
    assert any(k.endswith(".png") for k in ref) and "main.csv" in ref and ".report-files.json" in ref
    out = tmp_path / "reports" / "mini"
    if kind == "time":
        p = _start(["report", inp, out])
        time.sleep(at)
        assert _kill(p), "the report loop ended before the kill"
    else:
        _wait_self_kill(_start(["report", inp, out], KILL_AT_REPLACE=at))
    _check_no_partial(_tree(out), ref, f"report killed at {kind}={at}")
    build_suite_report(**KD.report_kwargs(inp, out))  # the re-run
    assert _tree(out) == ref


# ----------------------------------------------------------------------------------------------------- (a) download
@pytest.fixture(scope="module")
def c10():
    """A 5.5 MB cifar-10-python.tar.gz in the real format (300 images per batch) and its expected arrays."""
    return cifar10_tarball(n_per_batch=300, seed=3)


def _prepare_here(data_dir: Path, src) -> dict:
    return D.prepare("cifar10", data_dir=data_dir, options={"retries": 2, "timeout": 10}, progress=False,
                     sources={src.filename: src})


def _check_prepared_state(d: Path, blob: bytes, exp: dict) -> dict:
    """After a kill: the raw archive is absent or verified, the prepared folder absent or complete."""
    state = {}
    raw = d / "raw" / "cifar10" / "cifar-10-python.tar.gz"
    if raw.exists():
        assert md5(raw.read_bytes()) == md5(blob), f"{raw}: a partial download under the final name"
        state["raw"] = True
    part = raw.with_name(raw.name + ".part")
    state["part"] = part.exists() and part.stat().st_size < len(blob)
    prep = d / "prepared"
    if (prep / "cifar10").exists():
        for split, key in (("train", "train"), ("test", "test")):
            s = D.load_split(d, "cifar10", split, verify="full")
            np.testing.assert_array_equal(s.images, exp[key][0])
            np.testing.assert_array_equal(s.labels, exp[key][1])
        state["prepared"] = True
    if prep.is_dir():
        others = [n for n in os.listdir(prep) if n != "cifar10"]
        assert all(n.startswith(".") for n in others), f"unexpected entries in {prep}: {others}"
    return state


def _prepare_points():
    rnd = random.Random(SEED + 2)
    return [("part", round(rnd.uniform(0.15, 0.85), 3)), ("part", round(rnd.uniform(0.15, 0.85), 3)),
            ("prepare", round(rnd.uniform(0.0, 0.1), 3)), ("replace", rnd.randint(1, 4))]


@pytest.mark.parametrize("kind,at", _prepare_points())
def test_download_and_prepare_survive_sigkill(tmp_path, server, c10, kind, at):
    blob, exp = c10
    url = server.add("/c10/cifar-10-python.tar.gz", blob)
    src = source_for("cifar-10-python.tar.gz", blob, [url])
    ref_dir = tmp_path / "ref"
    _prepare_here(ref_dir, src)
    ref_prep, ref_raw = _tree(ref_dir / "prepared"), _tree(ref_dir / "raw")
    n_ref_requests = len(server.log)

    d = tmp_path / "killed"
    args = ["prepare", d, url, md5(blob), len(blob)]
    part = d / "raw" / "cifar10" / "cifar-10-python.tar.gz.part"
    if kind == "part":  # throttled transfer: kill once the .part holds the fraction ``at`` of the archive
        server.delay, server.chunk = 0.01, 1 << 15
        p = _start(args)
        deadline = time.time() + 60
        while p.poll() is None and time.time() < deadline and not (
                part.exists() and part.stat().st_size >= at * len(blob)):
            time.sleep(0.002)
        assert _kill(p), "the download finished before the kill"
        server.delay = 0.0
    elif kind == "prepare":  # kill ``at`` seconds into the conversion (the verified archive is in place)
        p = _start(args)
        raw = part.with_name("cifar-10-python.tar.gz")
        deadline = time.time() + 60
        while p.poll() is None and time.time() < deadline and not raw.exists():
            time.sleep(0.001)
        time.sleep(at)
        _kill(p)
    else:
        _wait_self_kill(_start(args, KILL_AT_REPLACE=at))
    state = _check_prepared_state(d, blob, exp)
    if kind == "part":
        assert state["part"] and not state.get("raw"), state

    n = len(server.log)
    _prepare_here(d, src)  # the re-run
    assert _tree(d / "prepared") == ref_prep  # byte-identical npy files and manifest, no stale build folders
    assert _tree(d / "raw") == ref_raw  # the verified archive and its .origin; no .part left
    if kind == "part":  # the re-run continued the partial download with an HTTP Range request
        rng = [r for _, r in server.log[n:]]
        assert rng and rng[0].startswith("bytes=") and int(rng[0][6:-1]) > 0, server.log[n_ref_requests:]
