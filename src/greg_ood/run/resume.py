"""Whether a training run may continue from its checkpoint, and which MLflow run it continues.

A checkpoint records the *fingerprint* of the run that wrote it: the hash of the stage's validated params, of the code
the stage runs (:func:`greg_ood.run.codedeps.fingerprint` of the stage script: the same files DVC lists as its deps) and of
its input data (prepared datasets' manifests, the pretrained model, the selection indices). A run continues from the
checkpoint only when the checkpoint verifies against its sha256 sidecar, is unfinished and has the same fingerprint;
anything else starts over, and the log says which of params / code / data changed. So ``dvc repro -f`` (whose
checkpoint is finished) trains again, and an edited ``losses.py`` never keeps the old model.

The MLflow run id is recorded in ``<checkpoint>.run.json`` right after the run is opened (before the first step), so a
re-run after any kill either continues that run or, when it starts over, marks it FAILED if it was left RUNNING:
never two RUNNING runs for one stage.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import codedeps, tracking
from .io import verify_checksum, write_json_atomic
from .trainer import load_checkpoint

log = logging.getLogger("greg_ood")


@dataclass
class Plan:
    """What :func:`plan` decided: continue (``resume``) with the checkpoint's metric log and MLflow run, or not."""

    resume: bool
    run_id: Optional[str] = None
    history: list = field(default_factory=list)
    stale_run_id: Optional[str] = None  # the run of a checkpoint that is not continued


def stage_script() -> Path:
    """The script this process runs (its import closure is the code of the stage)."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(main) if main else Path(__file__)


def fingerprint(params_hash: str, inputs: Optional[dict] = None, script: Optional[Path] = None) -> dict[str, str]:
    """The parts that determine a run's result (params, code, data) and their combined ``digest``."""
    parts = {"params": params_hash, "code": codedeps.fingerprint(script or stage_script()),
             "data": tracking.params_hash(inputs or {})}
    return {**parts, "digest": tracking.params_hash(parts)}


def plan(name: str, ckpt_path: Path, fp: dict[str, str], epochs: int) -> Plan:
    """Decide whether ``ckpt_path`` is the same, unfinished run (see the module docstring); log why not."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.exists():
        return Plan(resume=False)
    problem = verify_checksum(ckpt_path)
    if problem is not None:
        log.warning("%s: checkpoint %s does not verify (%s); starting over", name, ckpt_path, problem)
        return Plan(resume=False)
    try:
        ck = load_checkpoint(ckpt_path)
    except Exception as e:  # noqa: BLE001 - unreadable checkpoint: start over, never crash on it
        log.warning("%s: checkpoint %s unreadable (%s); starting over", name, ckpt_path, e)
        return Plan(resume=False)
    extra = ck.get("extra", {})
    old = extra.get("fingerprint") or {}
    run_id = extra.get("mlflow_run_id")
    changed = [k for k in ("params", "code", "data") if old.get(k) != fp[k]]
    if changed:
        log.info("%s: %s changed since %s was written; starting over", name, " and ".join(changed), ckpt_path)
        return Plan(resume=False, stale_run_id=run_id)
    if int(ck.get("epoch", 0)) >= epochs:
        log.info("%s: %s is a finished run (forced re-run); training again from the start", name, ckpt_path)
        return Plan(resume=False, stale_run_id=run_id)
    log.info("%s: resuming from %s (global step %d)", name, ckpt_path, int(ck.get("global_step", 0)))
    return Plan(resume=True, run_id=run_id, history=list(extra.get("history", [])))


def record_path(ckpt_path: Path) -> Path:
    return Path(ckpt_path).with_name(Path(ckpt_path).name + ".run.json")


def read_record(ckpt_path: Path) -> dict:
    p = record_path(ckpt_path)
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        return {}


def write_record(ckpt_path: Path, run_id: str, digest: str) -> None:
    write_json_atomic(record_path(ckpt_path), {"run_id": run_id, "fingerprint": digest})


def choose_run(p: Plan, ckpt_path: Path, digest: str) -> Optional[str]:
    """The MLflow run to continue (None: open a new one). Runs left RUNNING that are not continued become FAILED.

    Continued: the checkpoint's run when resuming; else the recorded run when it has the same fingerprint, logged no
    metric yet and did not finish (a kill before the first checkpoint)."""
    tracking.check_reachable()  # fail fast (before any store query) when a configured server does not answer
    rec = read_record(ckpt_path)
    chosen = p.run_id if p.resume else None
    if not p.resume and rec.get("run_id") and rec.get("fingerprint") == digest and \
            tracking.run_is_fresh(rec["run_id"]):
        chosen = rec["run_id"]
    for rid in {rec.get("run_id"), p.stale_run_id, p.run_id} - {None, chosen}:
        tracking.fail_if_running(rid)
    return chosen
