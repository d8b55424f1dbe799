"""One training stage execution end to end (shared by the pretrain and train stages): open or resume the MLflow run,
run the :class:`~greg_ood.trainer.Trainer`, keep the CSV curve and the MLflow metrics consistent with the checkpoint,
and write the final weights.

Consistency under kills: metric rows are buffered and written (CSV next to the checkpoint, MLflow batch) only right
after a checkpoint is saved. After a SIGKILL the resumed run therefore continues exactly where both the weights and the
logged curve stopped: no gaps, no duplicate steps. The CSV lives in the persistent checkpoint folder and is copied to
its DVC out path at the end.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import tracking
from .evaluation import id_accuracy
from .trainer import Hooks, Job, Sources, Trainer, load_checkpoint, save_atomic

log = logging.getLogger("greg_ood")

CSV_FIELDS = ["step", "epoch", "lr", "ce", "energy", "oe", "abs", "grad", "total", "active_frac", "gradnorm_id", "gradnorm_aux",
              "monitor_gradnorm_id", "monitor_gradnorm_aux", "id_test_acc", "active_frac_id", "active_frac_aux",
              "energy_id_p5", "energy_id_p50", "energy_id_p95", "energy_aux_p5", "energy_aux_p50", "energy_aux_p95"]


class CsvLog:
    """Append-only CSV of training metrics, truncated to a given step on resume (``enabled=False``: writes nothing,
    for the non-zero ranks of a DDP run, which share rank 0's paths)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.rows: list[dict] = []
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            keep = [r for r in csv.DictReader(f) if r.get("step") and int(float(r["step"])) <= step]
        self._write(keep, mode="w")

    def add(self, row: dict, step: int) -> None:
        r = {k: row.get(k, "") for k in CSV_FIELDS}
        r["step"] = step
        self.rows.append(r)

    def flush(self) -> None:
        if self.rows:
            self._write(self.rows, mode="a")
            self.rows = []

    def last_step(self) -> int:
        if not self.path.exists():
            return -1
        with open(self.path, newline="") as f:
            steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("step")]
        return max(steps, default=-1)

    def _write(self, rows: list[dict], mode: str) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = mode == "w" or not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())


@dataclass(frozen=True)
class RunRecord:
    """How one stage execution is recorded: its MLflow run (``stage``, ``name``, ``suite`` and the logged
    ``params``), the identity of its result (``meta``, also written into the weights file) and its files: the
    persistent checkpoint, the final weights and the training curve."""

    stage: str
    name: str
    suite: str
    params: dict
    meta: dict
    ckpt_path: Path
    out_path: Path
    csv_path: Path


def run_training(cfg, job: Job, model, sources: Sources, record: RunRecord, *, sd, device,
                 distributed=None) -> dict:
    """Train ``job`` on ``sources`` as the stage execution ``record`` (``sd``: the suite's data, for the ID test
    accuracy after each epoch); returns ``{"steps", "seconds", "resumed_from"}``."""
    name, stage, suite, params, meta = record.name, record.stage, record.suite, record.params, record.meta
    ckpt_path, out_path, csv_path = record.ckpt_path, record.out_path, record.csv_path
    is_main = distributed is None or distributed.is_main
    config_hash = tracking.params_hash({"params": params, "meta": meta})
    ckpt_path = Path(ckpt_path)
    run_id = None
    resume_step = 0
    carried: list = []  # metric rows the checkpoint covers but that may not have been published before a kill
    if ckpt_path.exists():
        try:
            ck = load_checkpoint(ckpt_path)
            if ck.get("config_hash") == config_hash:
                run_id = ck.get("extra", {}).get("mlflow_run_id")
                resume_step = int(ck.get("global_step", 0))
                carried = list(ck.get("extra", {}).get("pending", []))
                log.info("%s: resuming from %s (global step %d)", name, ckpt_path, resume_step)
            else:
                log.info("%s: parameters changed since %s was written; starting over", name, ckpt_path)
        except Exception as e:  # noqa: BLE001 - unreadable checkpoint: start over, never crash on it
            log.warning("%s: checkpoint %s unreadable (%s); starting over", name, ckpt_path, e)
            ckpt_path.unlink(missing_ok=True)
    work_csv = ckpt_path.with_suffix(".train.csv")
    csvlog = CsvLog(work_csv, enabled=is_main)
    if resume_step:
        csvlog.truncate_after(resume_step)
        last = csvlog.last_step()
        for row, step in carried:
            if step > last:
                csvlog.add(row, step)
        csvlog.flush()
    elif work_csv.exists() and is_main:
        work_csv.unlink()

    ctx = tracking.stage_run(stage, name, suite=suite, params=params if is_main else None, resume_run_id=run_id,
                             experiment_prefix=cfg.params.mlflow.experiment_prefix, config_hash=config_hash) \
        if is_main else _null_run()
    with ctx as run:
        if carried and run_id is not None and getattr(run, "run_id", None) == run_id:
            _publish_missing(run, carried)
        bar = _StepBar(name)
        # rows logged since the last checkpoint; saved inside the next checkpoint, then published (so a kill between
        # the two loses nothing: the resumed run publishes whatever the store lacks)
        pending: list = []

        def log_fn(row: dict, step: int) -> None:
            pending.append([dict(row), int(step)])
            csvlog.add(row, step)

        def on_save() -> None:  # called right after each checkpoint: publish what the checkpoint covers
            for row, step in pending:
                run.log_metrics(row, step)
            run.flush()
            csvlog.flush()
            pending.clear()

        def epoch_end(epoch: int, logs: dict) -> dict:
            if not is_main:  # only rank 0 logs: the other ranks skip the evaluation
                return {}
            acc = id_accuracy(model.module if hasattr(model, "module") else model, sd.id_test, mean=sd.mean,
                              std=sd.std, device=device)
            log.info("%s: epoch %d done, ID test accuracy %.4f", name, epoch + 1, acc)
            return {"id_test_acc": acc}

        hooks = Hooks(log=log_fn, log_every=cfg.params.mlflow.log_every, epoch_end=epoch_end, on_save=on_save,
                      progress=bar.update_to if is_main else None)
        trainer = Trainer(model, job, sources, device=device, hooks=hooks, ckpt_path=ckpt_path,
                          config_hash=config_hash,
                          extra_state={"mlflow_run_id": getattr(run, "run_id", None), "pending": pending},
                          distributed=distributed)
        with bar:
            result = trainer.fit()
        on_save()
        if is_main:
            bare = model.module if hasattr(model, "module") else model
            save_atomic({"model": bare.state_dict(), "meta": {**meta, "global_step": result.steps,
                                                              "config_hash": config_hash}}, Path(out_path))
            Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work_csv, csv_path) if work_csv.exists() else Path(csv_path).write_text(
                ",".join(CSV_FIELDS) + "\n")
            run.log_metrics({"train_seconds": result.seconds, "train_steps": result.steps}, result.steps)
            run.set_tags({"resumed_from": str(result.resumed_from)})
            run.log_artifact(csv_path, "curves")
            run.log_artifact(out_path, "model")
            log.info("%s: %d steps in %.1f s -> %s", name, result.steps, result.seconds, out_path)
        return {"steps": result.steps, "seconds": result.seconds, "resumed_from": result.resumed_from}


def _publish_missing(run, rows: list) -> None:
    """Log the carried rows whose step the run does not have yet for that key (idempotent: no duplicates)."""
    client = getattr(run, "client", None)
    if client is None:
        return
    keys = {k for row, _ in rows for k in row}
    last = {}
    for k in keys:
        hist = tracking._retry(client.get_metric_history, run.run_id, tracking._key(k))
        last[k] = max((m.step for m in hist), default=-1)
    for row, step in rows:
        todo = {k: v for k, v in row.items() if step > last.get(k, -1)}
        if todo:
            run.log_metrics(todo, step)
    run.flush()


class _StepBar:
    """A tqdm progress bar over the training steps (shown on a terminal only: tqdm's ``disable=None``)."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def update_to(self, step: int, total: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=step - 1, desc=self.desc, unit="step", disable=None,
                            mininterval=1.0, dynamic_ncols=True)
        self.bar.update(step - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


class _NullRun:
    run_id = None

    def log_metrics(self, *a, **k):
        pass

    def flush(self):
        pass

    def set_tags(self, *a, **k):
        pass

    def log_artifact(self, *a, **k):
        pass


class _null_run:
    def __enter__(self):
        return _NullRun()

    def __exit__(self, *exc):
        return False
