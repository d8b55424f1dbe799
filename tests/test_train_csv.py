"""The training CSV has one row per step (the epoch-end ID accuracy on its step's row), and the converter turns a
CSV of the old format (a second row per epoch-end step) into exactly what the current writer writes."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from greg_ood.run.io import atomic_open
from greg_ood.run.runlog import CSV_FIELDS, convert_old_curve, write_curve

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def _history(epochs: int = 2, steps: int = 4, log_every: int = 2) -> list:
    """A metric log as run_training records it: a row every ``log_every`` steps and at each epoch's last step, then
    the epoch-end ID accuracy logged at that same step."""
    h, g = [], 0
    for e in range(epochs):
        for s in range(steps):
            g += 1
            if g % log_every == 0 or s == steps - 1:
                h.append([{"ce": 1.0 / g, "total": 2.5 / g + 1e-9, "lr": 0.1 * (0.9 ** g), "epoch": e}, g])
        h.append([{"id_test_acc": 0.5 + 0.1 * e}, g])
    return h


def _old_writer(path: Path, history: list) -> None:
    """The writer before the one-row-per-step format (verbatim logic): one CSV row per log entry."""
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**{k: row.get(k, "") for k in CSV_FIELDS}, "step": step} for row, step in history)


def _steps(path: Path) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader(path.open(newline=""))]


def test_one_row_per_step_with_the_epoch_end_accuracy_on_it(tmp_path):
    p = tmp_path / "c.csv"
    write_curve(p, _history(epochs=2, steps=5, log_every=2))
    rows = list(csv.DictReader(p.open(newline="")))
    steps = [int(r["step"]) for r in rows]
    assert steps == [2, 4, 5, 6, 8, 10] and len(set(steps)) == len(steps)
    by = {int(r["step"]): r for r in rows}
    assert by[5]["id_test_acc"] == "0.5" and by[5]["epoch"] == "0" and by[5]["lr"] != ""
    assert by[10]["id_test_acc"] == "0.6" and by[10]["epoch"] == "1"
    assert by[4]["id_test_acc"] == ""


def test_converter_turns_old_format_into_the_new_writers_bytes(tmp_path):
    h = _history(epochs=3, steps=4, log_every=3)
    _old_writer(tmp_path / "old.csv", h)
    write_curve(tmp_path / "new.csv", h)
    old = (tmp_path / "old.csv").read_bytes().decode()
    assert len(_steps(tmp_path / "old.csv")) == len(set(_steps(tmp_path / "old.csv"))) + 3  # the old duplicates
    assert convert_old_curve(old).encode() == (tmp_path / "new.csv").read_bytes()
    assert convert_old_curve(convert_old_curve(old)) == convert_old_curve(old)  # new format: unchanged


def test_convert_tool_rewrites_a_copy_of_a_committed_curve(tmp_path):
    import convert_train_csv as T

    src = sorted((ROOT / "metrics" / "mini" / "train").glob("*.train.csv"))[0]
    f = tmp_path / src.name
    f.write_bytes(src.read_bytes())
    before = list(csv.DictReader(f.open(newline="")))
    changed = T.convert([f])
    after = list(csv.DictReader(f.open(newline="")))
    steps = [int(r["step"]) for r in after]
    assert len(steps) == len(set(steps)) and sorted(set(steps)) == sorted({int(r["step"]) for r in before})
    accs = [r["id_test_acc"] for r in before if r["id_test_acc"]]
    assert [r["id_test_acc"] for r in after if r["id_test_acc"]] == accs
    assert all(r["epoch"] != "" and r["lr"] != "" for r in after)
    assert T.convert([f]) == []  # idempotent
    assert changed == ([f] if len(before) != len(after) else [])


def test_converted_committed_curve_equals_the_new_writer_on_that_runs_log(tmp_path):
    """A curve the old code wrote for a real run (committed mini results): its log, recovered from the old rows (one
    log entry per row, as the old writer wrote them), written by the current writer gives the converter's bytes."""
    for src in sorted((ROOT / "metrics" / "mini" / "train").glob("*.train.csv"))[:3]:
        old = src.read_bytes().decode()
        rows = list(csv.DictReader(old.splitlines()))
        history = [[{k: v for k, v in r.items() if k != "step" and v != ""}, int(r["step"])] for r in rows]
        write_curve(tmp_path / src.name, history)
        assert convert_old_curve(old).encode() == (tmp_path / src.name).read_bytes(), src.name
