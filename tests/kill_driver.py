"""Real processes for the kill-safety tests (tests/test_kill_safety.py), each doing what one stage does to its files:

* ``prepare DATA_DIR URL MD5 SIZE``: download + verify + prepare CIFAR-10 from a local HTTP server
  (``greg_ood.data.prepare``, as stages/download.py does).
* ``evaluate OUT [--loops N]``: score a small model with ``greg_ood.run.evaluation.evaluate`` on Fashion-MNIST-shaped
  arrays once, then write the evaluate stage's five outputs (results, metrics, scores .npz, ROC points) with the
  library writers stages/evaluate.py uses, ``N`` times (0 = until killed).
* ``report IN OUT [--loops N]``: ``greg_ood.report.build_suite_report`` over the inputs under ``IN`` into ``OUT``,
  ``N`` times (0 = until killed).

With ``KILL_AT_REPLACE=k`` in the environment the process sends itself SIGKILL just before its k-th
``os.replace`` (the moment a finished temporary file would be renamed into place). ``ready`` is printed on stdout
once the imports and set-up are done, so the test can time its own SIGKILL from there.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def _install_replace_hook() -> None:
    k = int(os.environ.get("KILL_AT_REPLACE", "0") or 0)
    if k <= 0:
        return
    real = os.replace
    count = [0]

    def replace(src, dst, *a, **kw):
        count[0] += 1
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **kw)

    os.replace = replace


def _ready() -> None:
    print("ready", flush=True)


def run_prepare(args) -> None:
    from greg_ood import data as D
    from greg_ood.data import Source

    fn = "cifar-10-python.tar.gz"
    src = Source(fn, (args.url,), md5=args.md5, size=int(args.size))
    _install_replace_hook()
    _ready()
    D.prepare("cifar10", data_dir=Path(args.data_dir), options={"retries": 2, "timeout": 10}, progress=False,
              sources={fn: src})


def eval_outputs():
    """(results, summary, arrays, roc, head) of a real evaluate() call on a seeded small model and seeded data."""
    import numpy as np
    import torch

    from greg_ood.run import config as C
    from greg_ood import models
    from greg_ood.data import ArraySplit
    from greg_ood.run.evaluation import evaluate

    torch.manual_seed(0)
    rng = np.random.RandomState(0)
    model = models.build("small_cnn", 6, in_channels=1)
    mk = lambda n, shift: ArraySplit(  # noqa: E731
        images=np.clip(rng.normal(120 + shift, 60, size=(n, 28, 28, 1)), 0, 255).astype(np.uint8),
        labels=rng.randint(0, 6, n).astype(np.int64), class_names=[str(i) for i in range(6)],
        mean=(0.5,), std=(0.25,))
    id_test, id_train = mk(600, 0), mk(400, 0)
    ood = {"fmnist_near": mk(500, 30), "digits": mk(400, -50), "gaussian_noise": mk(300, 80)}
    ev = C.EvalCfg(scores=["energy", "msp", "max_logit", "mahalanobis"], batch_size=256,
                   mahalanobis_fit_count=400)
    results, arrays, roc = evaluate(model, id_test=id_test, ood=ood, eval_cfg=ev, mean=(0.5,), std=(0.25,),
                                    device="cpu", primary="energy", fit_split=id_train)
    head = "fmnist_near"
    full = {"experiment": "mini-greg-small_cnn-s0", "suite": "mini", **results, "ood_sets": list(ood),
            "headline_set": head}
    summary = {"id_accuracy": results["id_accuracy"], "fpr95": results["fpr95"], "auroc": results["auroc"],
               f"{head}.fpr95": results["scores"]["energy"]["per_set"][head]["fpr95"]}
    return full, summary, arrays, roc, head


def write_eval_outputs(root: Path, full, summary, arrays, roc, head) -> None:
    """The write sequence of stages/evaluate.py, to the paths of greg_ood.run.paths.Paths."""
    from greg_ood.run.io import write_json_atomic, write_npz_atomic
    from greg_ood.run.paths import Paths

    P, s, e = Paths(root), "mini", "mini-greg-small_cnn-s0"
    write_json_atomic(P.results(s, e), full)
    write_json_atomic(P.metrics(s, e), summary)
    write_npz_atomic(P.scores(s, e), {f"{sc}/{st}": a for sc, d in arrays.items() for st, a in d.items()})
    write_json_atomic(P.roc(s, e), [{"fpr": p["fpr"], "tpr": p["tpr"], "set": head} for p in roc[head]])
    write_json_atomic(P.roc_all(s, e), roc)


def run_evaluate(args) -> None:
    outs = eval_outputs()
    _install_replace_hook()
    _ready()
    i = 0
    while args.loops == 0 or i < args.loops:
        write_eval_outputs(Path(args.out), *outs)
        i += 1


def report_kwargs(inp: Path, out: Path) -> dict:
    """build_suite_report arguments for the inputs the test laid out under ``inp``."""
    inp = Path(inp)
    return dict(suite="mini", metrics_files=sorted((inp / "results").glob("*.json")), paper_csv=None,
                out_dir=Path(out), scores_dir=inp / "scores", plots_dir=inp / "roc",
                train_csv_files=sorted((inp / "train").glob("*.csv")))


def run_report(args) -> None:
    from greg_ood.report import build_suite_report

    kw = report_kwargs(Path(args.inp), Path(args.out))
    _install_replace_hook()
    _ready()
    i = 0
    while args.loops == 0 or i < args.loops:
        build_suite_report(**kw)
        i += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("data_dir")
    p.add_argument("url")
    p.add_argument("md5")
    p.add_argument("size")
    e = sub.add_parser("evaluate")
    e.add_argument("out")
    e.add_argument("--loops", type=int, default=0)
    r = sub.add_parser("report")
    r.add_argument("inp")
    r.add_argument("out")
    r.add_argument("--loops", type=int, default=0)
    args = ap.parse_args()
    {"prepare": run_prepare, "evaluate": run_evaluate, "report": run_report}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
