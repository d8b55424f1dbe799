"""Step-cost benchmark of the method core on the current device.

    python -m bench.step_cost [--quick] [--smoke] [--out reports/bench] [--models small_cnn wrn40_2 ...] [--amp]

For each model (small_cnn at 28x28x1; wrn40_2, resnet18, densenet100 at 32x32x3; K = 10) it measures the median
wall-clock seconds per training step (warm-up excluded) of

* ``energy``     energy fine-tuning: 64 ID + 64 random aux, CE + λ_S L_S, one forward/backward, SGD step;
* ``greg``       the same batch plus the single-forward GReg penalty (:func:`greg_ood.methods.training_step`);
* ``greg_plus``  C = 384 candidates -> eval-mode forward -> energy + torch k-means (k = 64, n_init 3, two-way)
                 -> 64 ID + 128 selected aux -> the GReg step;
* ``official_greg`` / ``official_greg_plus``: the official code's way in the same process: per-sample torchvision
  PIL transforms (random crop + flip + ToTensor + Normalize) for the batch, the main forward, a **second forward**
  inside ``torch.autograd.functional.jacobian`` of the hinge closure (create_graph), row norms, one backward;
  GReg+ adds the candidate forward, a host copy of the features and scikit-learn ``KMeans(n_init=3)`` with the
  official per-cluster selection loop and ``random.sample`` top-up.

Timed steps run round-robin over the five step kinds (warm-up rounds first), so that all of them see the same
background load on a shared machine. Our steps include our data path (batched on-device crop/flip/normalise from a
uint8 tensor, :class:`greg_ood.data.DeviceArraySource`), so "incl. data" ratios compare whole steps; compute-only numbers are
reported as well. Also: the sampler alone (ours vs scikit-learn on the same candidate features, inertia ratio), eval
throughput (images/s), peak memory (process RSS on CPU, sampled every 2 ms; ``torch.cuda.max_memory_allocated`` on
CUDA). ``--amp`` (CUDA only) runs the steps under bf16 autocast and validates loss components against fp32 on the
same batch (relative tolerance ``AMP_RTOL``). Writes ``<out>/<device>.json`` and ``<out>/<device>.md``.

Targets (pass/fail in the report): GReg step <= 1.15 x 3.3 x energy step; GReg (and GReg+) step <= 0.75 x the
official-style step; sampling <= 10 % of a GReg+ step; sampler >= 5x faster than scikit-learn at inertia <= 1.02x.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch

from .measure import base_parser, device_slug, machine_info, rss, write_result
from .report import write_markdown
from .steps import MODELS, TARGETS, bench_model


def run(*, quick: bool = False, smoke: bool = False, out: Optional[Path] = Path("reports/bench"),
        models: Optional[list[str]] = None, device: str = "auto", amp: bool = False, threads: Optional[int] = None,
        repeats: Optional[int] = None, warmup: Optional[int] = None, batch: Optional[int] = None,
        merge: bool = False, max_memory_gb: Optional[float] = None, note: str = "", log=print) -> dict:
    """Run the benchmark (see the module docstring); returns the result dict and writes it under ``out``
    (``None``: no files), rewriting the files after every model. ``threads`` sets torch's intra-op threads and
    scikit-learn's pools for the run (restored afterwards). ``batch`` replaces B = 64 (C = 6B, k = min(64, B)).
    ``merge`` keeps the other models of an existing report in ``out``. ``max_memory_gb`` (CPU) caps the address
    space so that a step that would exhaust the machine fails with an allocation error and is reported as OOM
    instead of waking the kernel's OOM killer (default: 90 % of the memory available at start; 0 = no cap)."""
    old_threads = torch.get_num_threads()
    limit = nullcontext()
    if threads:
        torch.set_num_threads(int(threads))
        try:  # scikit-learn's OpenMP/BLAS pools get the same limit, for a like-for-like comparison
            from threadpoolctl import threadpool_limits

            limit = threadpool_limits(int(threads))
        except ImportError:  # pragma: no cover
            pass
    rlimit = None
    on_cpu = not (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()))
    if max_memory_gb is None and on_cpu:  # default guard: 90 % of what is free now (plus what we already hold)
        try:
            import psutil

            max_memory_gb = 0.9 * (psutil.virtual_memory().available + rss()) / 2**30
        except ImportError:  # pragma: no cover
            max_memory_gb = 0
    if max_memory_gb and on_cpu:
        import resource

        rlimit = resource.getrlimit(resource.RLIMIT_AS)
        cap = int(max_memory_gb * 2**30)
        if rlimit[1] != resource.RLIM_INFINITY:
            cap = min(cap, rlimit[1])
        resource.setrlimit(resource.RLIMIT_AS, (cap, rlimit[1]))
    try:
        with limit:
            return _run(quick=quick, smoke=smoke, out=out, models=models, device=device, amp=amp, repeats=repeats,
                        warmup=warmup, batch=batch, merge=merge, max_memory_gb=max_memory_gb, note=note, log=log)
    finally:
        torch.set_num_threads(old_threads)
        if rlimit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, rlimit)


def _run(*, quick, smoke, out, models, device, amp, repeats, warmup, batch, merge, note, log, **_) -> dict:
    dev = torch.device("cuda" if (device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    skipped = []
    if amp and dev.type != "cuda":
        skipped.append("--amp: no CUDA device, bf16 autocast not benchmarked (fp32 only)")
        log("bench: " + skipped[-1])
        amp = False
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if smoke:
        cfg = dict(B=8, C=48, k=8, warmup=0, repeats=1, eval_batches=1, eval_bs=16, sampler_repeats=1)
        models = models or ["small_cnn"]
    elif quick:
        cfg = dict(B=64, C=384, k=64, warmup=1, repeats=3, eval_batches=2, eval_bs=256, sampler_repeats=5)
    else:
        cfg = dict(B=64, C=384, k=64, warmup=2, repeats=7, eval_batches=4, eval_bs=512, sampler_repeats=10)
    if dev.type == "cuda" and not smoke:
        cfg.update(warmup=max(cfg["warmup"], 3), repeats=max(cfg["repeats"], 10), eval_batches=20)
    if repeats:
        cfg["repeats"] = int(repeats)
    if warmup is not None:
        cfg["warmup"] = int(warmup)
    if batch:
        cfg.update(B=int(batch), C=6 * int(batch), k=min(64, int(batch)))
    models = models or list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    result = {"machine": machine_info(dev), "config": {**cfg, "quick": quick, "smoke": smoke, "amp": amp},
              "note": note, "models": {}, "skipped": skipped, "targets": TARGETS}
    slug = device_slug(dev) + ("-amp" if amp else "") + ("-smoke" if smoke else "")
    paths = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = (out / f"{slug}.json", out / f"{slug}.md")
        if merge and paths[0].exists():
            old = json.loads(paths[0].read_text())
            result["models"] = {k: v for k, v in old.get("models", {}).items() if k not in models}
            notes = [old.get("note", ""), note]
            result["note"] = " | ".join(dict.fromkeys(x for x in notes if x))
    random.seed(0)
    for name in models:
        log(f"bench: {name} on {dev} ...")
        started = {"time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch_threads": torch.get_num_threads()}
        try:
            started["loadavg_start"] = list(os.getloadavg())
        except OSError:
            pass
        result["models"][name] = bench_model(name, dev, amp=amp, log=log, **cfg)
        result["models"][name]["run"] = started
        try:
            result["machine"]["loadavg_end"] = list(os.getloadavg())
        except OSError:
            pass
        if paths is not None:
            order = [m for m in MODELS if m in result["models"]]
            result["models"] = {m: result["models"][m] for m in order}
            write_result(result, paths, write_markdown)
    if paths is not None:
        log(f"bench: wrote {paths[0]} and {paths[1]}")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser("python -m bench.step_cost", __doc__, device_help="auto | cpu | cuda | cuda:N",
                     smoke_help="tiny batches, small_cnn only: checks that it runs")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (1 warm-up + 3 timed steps)")
    ap.add_argument("--models", nargs="+", default=None, help=f"subset of {list(MODELS)}")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (validated against fp32)")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for torch and scikit-learn's thread pools (default: library defaults)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="ID batch B (default 64; C = 6B, k = min(64, B))")
    ap.add_argument("--merge", action="store_true", help="keep other models already in the output report")
    ap.add_argument("--max-memory-gb", type=float, default=None,
                    help="CPU: cap the address space (default 90%% of available memory, 0 = none); steps that "
                         "exceed it are reported as out of memory")
    ap.add_argument("--note", default="", help="free text recorded in the report (e.g. machine shared)")
    a = ap.parse_args(argv)
    run(quick=a.quick, smoke=a.smoke, out=Path(a.out), models=a.models, device=a.device, amp=a.amp,
        threads=a.threads, repeats=a.repeats, warmup=a.warmup, batch=a.batch, merge=a.merge,
        max_memory_gb=a.max_memory_gb, note=a.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
