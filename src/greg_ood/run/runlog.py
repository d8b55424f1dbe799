"""One training stage execution end to end (shared by the pretrain and train stages): decide whether the checkpoint
may be continued (:mod:`greg_ood.run.resume`), open or continue the MLflow run, run the
:class:`~greg_ood.run.trainer.Trainer`, keep the CSV curve and the MLflow metrics consistent with the checkpoint, and
write the final weights.

Consistency under kills: every metric row goes into the checkpoint's own log (``extra["history"]``: all rows up to
the checkpoint's step) and is published (CSV next to the checkpoint, rewritten atomically from that log; MLflow
batch) only right after a checkpoint is saved. A resumed run rebuilds both from the checkpoint's log, so it continues
exactly where the weights stopped: no gaps, no duplicate steps, and no stop path (a NaN loss, an exception, a
signal) loses a row the last good checkpoint covers. One process at a time trains a checkpoint
(:func:`greg_ood.run.runguard.hold_run_lock`).
"""
from __future__ import annotations

import contextlib
import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from . import resume, runguard, tracking
from .runinfo import RunInfo, train_metric, train_metrics
from .evaluation import id_accuracy
from .io import atomic_open
from .trainer import Hooks, Job, Sources, Trainer, save_atomic

log = logging.getLogger("greg_ood")

CSV_FIELDS = ["step", "epoch", "lr", "ce", "energy", "oe", "abs", "grad", "total", "active_frac", "gradnorm_id", "gradnorm_aux",
              "monitor_gradnorm_id", "monitor_gradnorm_aux", "id_test_acc", "active_frac_id", "active_frac_aux",
              "energy_id_p5", "energy_id_p50", "energy_id_p95", "energy_aux_p5", "energy_aux_p50", "energy_aux_p95"]


def rows_by_step(history: list) -> list[tuple[dict, int]]:
    """The metric log ``[[row, step], ...]`` with one entry per step: consecutive entries of the same step (a step's
    row and the epoch-end ID accuracy logged after it) merged into one row, later values filling in."""
    out: list[tuple[dict, int]] = []
    for row, step in history:
        if out and out[-1][1] == step:
            out[-1] = ({**out[-1][0], **row}, step)
        else:
            out.append((dict(row), int(step)))
    return out


def write_curve(path: Path, history: list) -> None:
    """Write the metric log ``[[row, step], ...]`` as the training CSV, one row per step (:func:`rows_by_step`),
    atomically: old or new, never partial."""
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**{k: row.get(k, "") for k in CSV_FIELDS}, "step": step} for row, step in rows_by_step(history))


def convert_old_curve(text: str) -> str:
    """A training CSV of the old format (a second row for each epoch's last step, holding only ``id_test_acc``) in
    the current one-row-per-step format: consecutive rows of the same step merged, a non-empty cell filling in an
    empty one. Deterministic; a CSV already in the new format comes back unchanged."""
    import io

    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = list(reader.fieldnames or [])
    merged: list[dict] = []
    for row in reader:
        if merged and merged[-1]["step"] == row["step"]:
            merged[-1].update({k: v for k, v in row.items() if v != ""})
        else:
            merged.append(dict(row))
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=fields)
    w.writeheader()
    w.writerows(merged)
    return out.getvalue()


@dataclass(frozen=True)
class RunRecord:
    """How one stage execution is recorded: its MLflow run (``info``: stage, suite, method, ...; and the logged
    ``params``), the identity of its result (``meta``, also written into the weights file), its files (the
    persistent checkpoint, the final weights, the training curve) and ``inputs``, the content hashes of the data
    the stage reads (part of the checkpoint's fingerprint, with the params and the code)."""

    info: RunInfo
    params: dict
    meta: dict
    ckpt_path: Path
    out_path: Path
    csv_path: Path
    inputs: dict | None = None


def run_training(cfg, job: Job, model, sources: Sources, record: RunRecord, *, sd, device,
                 distributed=None) -> dict:
    """Train ``job`` on ``sources`` as the stage execution ``record`` (``sd``: the suite's data, for the ID test
    accuracy after each epoch); returns ``{"steps", "seconds", "resumed_from"}``."""
    info, params, meta = record.info, record.params, record.meta
    name = info.dvc_stage  # console lines name the DVC stage
    ckpt_path, out_path, csv_path = record.ckpt_path, record.out_path, record.csv_path
    is_main = distributed is None or distributed.is_main
    config_hash = tracking.params_hash({"params": params, "meta": meta})
    ckpt_path = Path(ckpt_path)
    if is_main:
        runguard.hold_run_lock(ckpt_path)
    fp = resume.fingerprint(config_hash, record.inputs)
    plan = resume.plan(name, ckpt_path, fp, job.cfg.epochs)
    run_id = resume.choose_run(plan, ckpt_path, fp["digest"]) if is_main else None
    history = plan.history  # the checkpoint's metric log, extended live by the trainer's rows
    work_csv = ckpt_path.with_suffix(".train.csv")
    if plan.resume and is_main:
        write_curve(work_csv, history)

    ctx = tracking.stage_run(info, params=params if is_main else None, resume_run_id=run_id,
                             experiment_prefix=cfg.params.mlflow.experiment_prefix, config_hash=config_hash,
                             on_open=lambda rid: resume.write_record(ckpt_path, rid, fp["digest"])) \
        if is_main else _null_run()
    with ctx as run:
        if history and is_main:
            _publish_missing(run, history)
        published = [len(history)]
        bar = _StepBar(name)

        def log_fn(row: dict, step: int) -> None:
            history.append([dict(row), int(step)])

        def on_save() -> None:  # called right after each checkpoint: publish what the checkpoint covers
            for row, step in history[published[0]:]:
                run.log_metrics(train_metrics(row), step)
            run.flush()
            if is_main:
                write_curve(work_csv, history)
            published[0] = len(history)

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
                          config_hash=fp["digest"],
                          extra_state={"mlflow_run_id": getattr(run, "run_id", None), "history": history,
                                       "fingerprint": fp},
                          distributed=distributed, resume=plan.resume)
        # single process: a SIGTERM/SIGINT saves at the next step boundary; under DDP it stops every rank at once
        stopper = runguard.graceful_stop() if distributed is None else contextlib.nullcontext()
        with bar, stopper:
            result = trainer.fit()
        on_save()
        if is_main:
            bare = model.module if hasattr(model, "module") else model
            save_atomic({"model": bare.state_dict(), "meta": {**meta, "global_step": result.steps,
                                                              "config_hash": config_hash}}, Path(out_path))
            write_curve(Path(csv_path), history)
            run.log_metrics(train_metrics({"train_seconds": result.seconds, "train_steps": result.steps}),
                            result.steps)
            run.set_tags({"resumed_from": str(result.resumed_from)})
            run.log_file(csv_path, "curves.csv")
            run.log_file(out_path, "model.pt")
            log.info("%s: %d steps in %.1f s -> %s", name, result.steps, result.seconds, out_path)
        return {"steps": result.steps, "seconds": result.seconds, "resumed_from": result.resumed_from}


def _publish_missing(run, rows: list) -> None:
    """Log the rows of the checkpoint's log whose step the run does not have yet for that key (idempotent: no
    duplicates, and a run that lost rows, e.g. after a kill between a checkpoint and its publication, gets them)."""
    client = getattr(run, "client", None)
    if client is None:
        return
    keys = {k for row, _ in rows for k in row}
    last = {}
    for k in keys:
        hist = tracking._retry(client.get_metric_history, run.run_id, tracking._key(train_metric(k)))
        last[k] = max((m.step for m in hist), default=-1)
    for row, step in rows:
        todo = {k: v for k, v in row.items() if step > last.get(k, -1)}
        if todo:
            run.log_metrics(train_metrics(todo), step)
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

    def log_file(self, *a, **k):
        pass


class _null_run:
    def __enter__(self):
        return _NullRun()

    def __exit__(self, *exc):
        return False
