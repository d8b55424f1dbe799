"""The runner's GPU placement (`python -m greg_ood.cli.repro --gpus`), its progress estimate and its output filter.

Placement is tested on CPU with a fake device list and a toy DVC project whose stages record the
`CUDA_VISIBLE_DEVICES` they were given. Each toy stage *claims* its devices with files created exclusively (a second
claim of a device fails the stage), so concurrent stages that shared a device would fail the run. Stages *rendezvous*:
each waits until its partners have started, so a run can only finish if they ran at the same time; with as many
partners as devices, that proves every device busy at once (no clock is compared)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from greg_ood.cli import repro as R

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# A toy stage: python stages/<job>.py <me> <out> <partner>... The import inside the never-called function is what the
# runner reads (statically, as codedeps does): `runtime` marks a script that picks a device, `paths` one that does not.
JOB = '''import os, pathlib, sys, time


def _declared():  # never called
    from greg_ood.run import {module}


me, out, partners = sys.argv[1], sys.argv[2], sys.argv[3:]
work = pathlib.Path("work")
(work / "claims").mkdir(parents=True, exist_ok=True)
devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
claims = []
for d in devices:
    claim = work / "claims" / f"dev-{{d}}"
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        sys.exit(f"{{me}}: device {{d}} is in use by {{claim.read_text()}}")
    os.write(fd, me.encode())
    os.close(fd)
    claims.append(claim)
(work / f"{{me}}.seen").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
(work / f"{{me}}.started").write_text("x")
t0 = time.monotonic()
while not os.environ.get("ALONE") and not all((work / f"{{p}}.started").exists() for p in partners):
    if time.monotonic() - t0 > 600:
        sys.exit(f"{{me}}: {{partners}} never all started beside me")
    time.sleep(0.05)
for claim in claims:
    claim.unlink()
pathlib.Path(out).write_text(me)
'''


def _stage(job, me, partners=(), deps=(), **extra):
    return {"cmd": " ".join(["python", f"stages/{job}.py", me, f"{me}.txt", *partners]),
            "deps": [f"stages/{job}.py", *deps], "outs": [f"{me}.txt"], **extra}


FOUR = ("g1", "g2", "g3", "cpu")
STAGES = {
    # four at once: three one-GPU stages on the three devices, and a GPU-free one beside them (--jobs 1)
    **{g: _stage("gpu_job", g, [o for o in FOUR if o != g]) for g in FOUR[:3]},
    "cpu": _stage("cpu_job", "cpu", FOUR[:3]),
    # then a 2-GPU (DDP) stage and a one-GPU stage at once: 2 + 1 devices
    "ddp": _stage("gpu_job", "ddp", ["solo"], deps=["g1.txt"], meta={"gpus": 2}),
    "solo": _stage("gpu_job", "solo", ["ddp"], deps=["g2.txt"]),
    "all": _stage("cpu_job", "all", deps=["g3.txt", "cpu.txt", "ddp.txt", "solo.txt"]),
    # three independent one-GPU stages for two devices: the third waits for a free one
    **{q: _stage("gpu_job", q) for q in ("q1", "q2", "q3")},
    "queue": _stage("cpu_job", "queue", deps=["q1.txt", "q2.txt", "q3.txt"]),
}


def _sh(args, cwd, env, check=True, timeout=900):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}")
    return r


def _toy(d: Path) -> dict:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               PYTHONPATH=str(ROOT / "src"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    (d / "stages").mkdir(parents=True)
    (d / "stages" / "gpu_job.py").write_text(JOB.format(module="runtime"))
    (d / "stages" / "cpu_job.py").write_text(JOB.format(module="paths"))
    (d / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}))
    _sh(["git", "init", "-q"], d, env)
    _sh([sys.executable, "-m", "dvc", "init", "-q"], d, env)
    return env


def _runner(d, env, *args, check=True):
    return _sh([sys.executable, "-m", "greg_ood.cli.repro", *args], d, env, check=check)


def _seen(d: Path, name: str) -> list[str]:
    return [x for x in (d / "work" / f"{name}.seen").read_text().split(",") if x]


def test_every_device_busy_never_shared_ddp_gets_k_and_dvc_lock_as_serial(tmp_path):
    d = tmp_path / "gpus"
    env = _toy(d)
    r = _runner(d, env, "all", "--gpus", "0,1,3", "--jobs", "1")
    # g1, g2, g3 and cpu met, so they ran at once: one device each, all three devices busy, cpu with none
    assert sorted(_seen(d, g)[0] for g in ("g1", "g2", "g3")) == ["0", "1", "3"]
    assert all(len(_seen(d, g)) == 1 for g in ("g1", "g2", "g3"))
    assert _seen(d, "cpu") == [] and _seen(d, "all") == []
    # ddp and solo met: ddp on two distinct devices, solo on the third
    ddp, solo = _seen(d, "ddp"), _seen(d, "solo")
    assert len(ddp) == 2 and len(set(ddp)) == 2 and len(solo) == 1 and set(ddp) | set(solo) == {"0", "1", "3"}
    assert "[ddp] start on GPU " in r.stdout and "[cpu] start (no GPU)" in r.stdout
    assert "To track the changes with git" not in r.stdout and "dvc push" not in r.stdout
    # the devices stay out of what DVC records: every lock entry equals that of a serial plain `dvc repro` without
    # placement (the entries' order is the order the stages finished in)
    serial = tmp_path / "serial"
    senv = _toy(serial)
    _sh([sys.executable, "-m", "dvc", "repro", "all"], serial, dict(senv, ALONE="1"))
    lock = yaml.safe_load((d / "dvc.lock").read_text())
    assert lock == yaml.safe_load((serial / "dvc.lock").read_text()) and len(lock["stages"]) == 7
    assert "CUDA" not in (d / "dvc.lock").read_text()


def test_a_stage_waits_for_a_free_device_and_all_means_what_is_visible(tmp_path):
    d = tmp_path / "queue"
    env = _toy(d)
    r = _runner(d, dict(env, CUDA_VISIBLE_DEVICES="5,7"), "queue", "--gpus", "all")
    assert "GPU stages each on free devices of 5,7" in r.stdout
    assert sorted(len(_seen(d, q)) for q in ("q1", "q2", "q3")) == [1, 1, 1]
    assert {_seen(d, q)[0] for q in ("q1", "q2", "q3")} == {"5", "7"}
    lines = r.stdout.splitlines()
    first_done = next(i for i, line in enumerate(lines) if line.startswith("[q") and " done in " in line)
    assert sum(1 for line in lines[:first_done] if " start on GPU " in line) == 2  # the third waited


def test_a_stage_needing_more_gpus_than_listed_is_refused_before_any_start(tmp_path):
    d = tmp_path / "small"
    env = _toy(d)
    dry = _runner(d, env, "all", "--gpus", "0,1", "--dry").stdout  # 2 fit in 0,1
    assert "  ddp  <- g1  [2 GPU]" in dry and "  cpu  [0 GPU]" in dry and "  g1  [1 GPU]" in dry
    r = _runner(d, env, "all", "--gpus", "0", check=False)
    assert r.returncode == 2 and "error: stage ddp needs 2 GPUs (train.nproc or meta.gpus) but --gpus gives 1" in r.stderr
    assert not (d / "work").exists()


def test_parse_gpus():
    assert R.parse_gpus(None) is None
    assert R.parse_gpus("0,1,3") == ["0", "1", "3"]
    assert R.parse_gpus(" 2 , 0 ") == ["2", "0"]
    assert R.parse_gpus("all", {"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}) == ["GPU-aa", "GPU-bb"]
    for bad, says in (("0,1,0", "names a device twice"), ("0,,1", "device ids separated by commas"),
                      ("all", "no GPU found")):
        with pytest.raises(ValueError, match=says):
            R.parse_gpus(bad, {"CUDA_VISIBLE_DEVICES": ""})


def test_pick_takes_the_longest_chain_first_and_fills_what_is_free():
    slots = R.Slots(jobs=1, devices=["0", "1", "3"])
    needs = {"big": 2, "big2": 2, "one": 1, "one2": 1, "c1": 0, "c2": 0}
    # ready, highest first: big takes two devices, big2 does not fit, one takes the last, the rest wait
    assert R.pick(["big", "big2", "c1", "one", "c2", "one2"], needs, slots) == [
        ("big", ["0", "1"]), ("c1", []), ("one", ["3"])]
    slots.give(["0", "1"])
    assert slots.free == ["0", "1"]
    assert R.pick(["big2", "c2"], needs, slots) == [("big2", ["0", "1"])]  # c2: the one --jobs place is taken
    slots.give([])
    assert R.pick(["c2"], needs, slots) == [("c2", [])]
    # without placement every stage takes one of the --jobs places, whatever it needs
    assert R.pick(["big", "one", "c1"], needs, R.Slots(jobs=2)) == [("big", []), ("one", [])]


def test_stage_env_places_only_with_gpus():
    base = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert R.stage_env(1, None, base) == base  # today's behaviour: nothing placed, nothing added
    env = R.stage_env(1, ["1", "3"], base)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert R.stage_env(2, [], base)["CUDA_VISIBLE_DEVICES"] == ""  # a stage that needs no GPU sees none


def test_device_need_rules():
    no_nproc = lambda argv: pytest.fail("asked for nproc")  # noqa: E731
    assert R.device_need("python -c 'print(1)'", None, str(ROOT), no_nproc) == 1  # unknown: a device to be safe
    assert R.device_need("anything", {"gpus": 0}, str(ROOT), no_nproc) == 0
    assert R.device_need("anything", {"gpus": 4}, str(ROOT), no_nproc) == 4
    with pytest.raises(ValueError, match="meta.gpus"):
        R.device_need("anything", {"gpus": -1}, str(ROOT), no_nproc)
    train = "python stages/train.py --suite s --method greg --arch a --seed 0"
    assert R.device_need(train, None, str(ROOT), lambda argv: 3 if argv[-1] == "0" else 0) == 3
    assert R.device_need(["python stages/report.py --suite s", train], None, str(ROOT), lambda argv: 2) == 2


@pytest.fixture(scope="module")
def real_stages():
    """The real repository's `mini` stages as DVC resolves them (command, meta, working folder)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [(s.addressing, s.cmd, s.meta, s.wdir) for s in repo.stage.collect("report_mini", with_deps=True)]


def test_device_need_of_the_real_stages(real_stages, tmp_path):
    params = ROOT / "params.yaml"
    needs = {}
    for name, cmd, meta, wdir in real_stages:
        needs.setdefault(R.kind(name), set()).add(R.device_need(cmd, meta, wdir, R.ExperimentNproc(params)))
    assert needs == {"download": {0}, "report_mini": {0}, "pretrain_mini": {1}, "select_mini": {1},
                     "train_mini": {1}, "train_mini_ablation": {1}, "evaluate_mini": {1},
                     "evaluate_mini_pretrained": {1}, "evaluate_mini_ablation": {1}, "certify_mini": {1}}
    # DDP for one method: its train stages need train.nproc devices, the others still one
    raw = yaml.safe_load(params.read_text())
    raw["suites"]["mini"]["method_params"]["greg"] = {**(raw["suites"]["mini"]["method_params"]["greg"] or {}),
                                                      "nproc": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    nproc = R.ExperimentNproc(tmp_path / "params.yaml")
    train = {name: R.device_need(cmd, meta, wdir, nproc) for name, cmd, meta, wdir in real_stages
             if R.kind(name) == "train_mini"}
    assert {n: k for n, k in train.items() if "@greg-" in n} and all(
        k == (2 if "@greg-" in n else 1) for n, k in train.items())


def test_project_device_cuda_n_is_refused_with_gpus(tmp_path):
    (tmp_path / "params.yaml").write_text("project:\n  device: cuda:1\n")
    with pytest.raises(ValueError, match="project.device: cuda:1; set it to auto"):
        R.check_device_setting(str(tmp_path))
    (tmp_path / "params.yaml").write_text("project:\n  device: cuda:0\n")
    R.check_device_setting(str(tmp_path))


# ---------------------------------------------------------------------------------------------- the estimate
def _plan():
    """t@1, t@2, t@3 (independent) -> r."""
    return R.Plan(order=["t@1", "t@2", "t@3", "r"], waits_for={"t@1": set(), "t@2": set(), "t@3": set(),
                                                              "r": {"t@1", "t@2", "t@3"}})


def test_estimate_known_answers():
    p = _plan()
    assert R.estimate_left(p, {}, set(), {}, jobs=2) is None  # nothing finished: nothing to go by
    # t takes (30 + 50) / 2 = 40 s, r 5 s; t@1 has run 10 s. Two places: t@1 ends at 30, t@2 at 40; t@3 starts at 30,
    # ends at 70; r then runs to 75
    est = R.estimate_left(p, {"t": [30, 50], "r": [5]}, set(), {"t@1": 10}, jobs=2)
    assert est.seconds == pytest.approx(75) and est.untimed == []
    # three devices: every t at once (t@1 ends at 30, the others at 40); r needs no GPU: 45
    p.needs = {"t@1": 1, "t@2": 1, "t@3": 1, "r": 0}
    assert R.estimate_left(p, {"t": [30, 50], "r": [5]}, set(), {"t@1": 10}, jobs=1,
                           devices=["0", "1", "2"]).seconds == pytest.approx(45)
    # a 2-GPU t@1 and t@2 on three devices: t@1 and t@3 first (40), t@2 then (80), r 85
    p.needs = {"t@1": 2, "t@2": 2, "t@3": 1, "r": 0}
    assert R.estimate_left(p, {"t": [40], "r": [5]}, set(), {}, jobs=1,
                           devices=["0", "1", "2"]).seconds == pytest.approx(85)
    # r not timed yet: guessed as the mean of every finished stage ((40 + 20) / 2 = 30), and said so
    p.needs = {}
    est = R.estimate_left(p, {"t": [40, 20]}, {"t@1", "t@2"}, {"t@3": 45}, jobs=2)
    assert est.seconds == pytest.approx(30) and est.untimed == ["r"]  # t@3 is over its mean: done any moment
    assert str(est) == "about 30 s left (rough: r not timed yet)"
    assert str(R.Estimate(90, ["a", "b"])) == "about 1 min 30 s left (rough: a and b not timed yet)"
    assert str(R.Estimate(90, ["a", "b", "c"])) == "about 1 min 30 s left (rough: 3 kinds not timed yet)"


def test_fmt_duration():
    assert [R.fmt_duration(s) for s in (0, 42.4, 60, 190, 3599, 3600, 7500)] == [
        "0 s", "42 s", "1 min 0 s", "3 min 10 s", "59 min 59 s", "1 h 00 min", "2 h 05 min"]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_lines_and_heartbeat_with_a_hand_clock():
    clock, out = Clock(), io.StringIO()
    prog = R.Progress(_plan(), jobs=2, devices=None, out=out, heartbeat=60, clock=clock)
    prog.start("t@1", [])
    clock.now = 59
    prog.beat()
    clock.now = 61
    prog.beat()
    clock.now = 90
    prog.beat()  # 29 s since the last line: nothing
    prog.output("t@1", "epoch 1/2\n")
    clock.now = 149
    prog.beat()  # 59 s since its output: nothing
    clock.now = 150
    prog.beat()
    prog.output("t@1", "To track the changes with git, run:\n")  # boilerplate: not shown, not a sign of life
    clock.now = 200
    prog.finish("t@1", 0, 0)
    assert out.getvalue().splitlines() == [
        "[t@1] start (0/4 done, 1 running) · 0 s elapsed, time left known after a stage",
        "[t@1] still running (1 min 1 s) · 1 min 1 s elapsed, time left known after a stage",
        "[t@1] epoch 1/2",
        "[t@1] still running (2 min 30 s) · 2 min 30 s elapsed, time left known after a stage",
        # t takes 200 s: t@2 and t@3 side by side (200), r guessed as 200 too: 400
        "[t@1] done in 200.0 s (1/4) · 3 min 20 s elapsed, about 6 min 40 s left (rough: r not timed yet)",
    ]


def test_a_stage_dvc_skipped_does_not_time_its_kind():
    clock, out = Clock(), io.StringIO()
    prog = R.Progress(_plan(), jobs=2, devices=None, out=out, clock=clock)
    prog.start("t@1", [])
    prog.output("t@1", "Stage 't@1' didn't change, skipping\n")
    clock.now = 2
    prog.finish("t@1", 0, 0)
    assert prog.durations == {} and "[t@1] Stage 't@1' didn't change, skipping" in out.getvalue()


# ---------------------------------------------------------------------------------------------- the output filter
#: real lines, captured from `dvc --wait-for-lock repro --single-item` (DVC 3.67) and a stage opening a new MLflow
#: store (MLflow's own logger); alembic's INFO line is in alembic's documented format (MLflow 3 silences it)
BOILERPLATE_LINES = """Generating lock file 'dvc.lock'
Updating lock file 'dvc.lock'

To track the changes with git, run:

\tgit add .gitignore dvc.lock

To enable auto staging, run:

\tdvc config core.autostage true
Use `dvc push` to send your updates to remote storage.
2026/12/07 21:34:26 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
2026/12/07 21:34:26 INFO mlflow.store.db.utils: Updating database tables
INFO  [alembic.runtime.migration] Context impl SQLiteImpl.
INFO  [alembic.runtime.migration] Will assume non-transactional DDL.
"""
KEPT_LINES = """Running stage 'train_mini@greg-small_cnn-0':
> python stages/train.py --suite mini --method greg --arch small_cnn --seed 0
2026-12-07 21:36:01,412 INFO train greg: epoch 1/2, loss 1.234
Stage 'download@fashion_mnist' didn't change, skipping
2026/12/07 21:34:26 WARNING mlflow.store.db.utils: Updating database tables took long
ERROR: failed to reproduce 'bad': failed to run: python -c "import sys; sys.exit(3)", exited with 3
error: --suite: suite 'minii' is not defined under `suites`
Traceback (most recent call last):
WARNING: git add dvc.lock failed
\tgit add dvc.lock  # ERROR: index.lock exists
"""


def test_filter_drops_the_boilerplate_and_keeps_warnings_errors_and_the_rest():
    assert [line for line in BOILERPLATE_LINES.splitlines() if R.shown(line)] == []
    assert [line for line in KEPT_LINES.splitlines() if R.shown(line)] == KEPT_LINES.splitlines()


def test_the_filter_covers_what_dvc_prints_now(tmp_path):
    """The DVC lines above are what this DVC prints: a real `dvc repro --single-item` shows no other line but the
    stage's own."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    _sh(["git", "init", "-q"], tmp_path, env)
    _sh([sys.executable, "-m", "dvc", "init", "-q"], tmp_path, env)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {
        "cmd": "python -c \"print('hello'); open('o.txt', 'w').write('1')\"", "outs": ["o.txt"]}}}))
    r = _sh([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", "s"], tmp_path, env)
    lines = (r.stdout + r.stderr).splitlines()
    assert "To track the changes with git, run:" in lines  # the tool still says it ...
    assert [line for line in lines if R.shown(line)] == [  # ... and the runner relays only this
        "Running stage 's':", "> python -c \"print('hello'); open('o.txt', 'w').write('1')\"", "hello"]


def test_mlflow_tags_the_device(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from greg_ood.run import tracking
    from greg_ood.run.runinfo import RunInfo

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with tracking.stage_run(RunInfo("report", suite="mini")) as run:
        rid = run.run_id
    assert MlflowClient(uri).get_run(rid).data.tags["device.cuda_visible_devices"] == "3"
    import torch  # noqa: F401 - imported by every stage that picks a device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    with tracking.stage_run(RunInfo("report", suite="mini"), resume_run_id=rid):
        pass
    tags = MlflowClient(uri).get_run(rid).data.tags
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    assert tags["device.cuda_visible_devices"] == "1,2" and tags["device.name"] == name  # the resumed run's
