"""GPU check: the numbers a GPU user needs before starting the paper suites, in one command of a few minutes.

    python -m bench.gpu_check [--device auto|cuda|cuda:N|cpu] [--smoke] [--out reports/bench]

Writes ``<out>/gpu-check.{json,md}`` (``gpu-check-smoke.*`` with ``--smoke``) with

1. the step benchmark of ``make bench`` (:mod:`bench.step_cost`: energy / GReg / GReg+ steps against the
   official-style steps, our sampler against scikit-learn, evaluation throughput) for WRN-40-2, ResNet-18 and
   DenseNet-100 at the paper's CIFAR fine-tuning batch (``suites.cifar10.train.batch_size``, 64 ID + 6x candidates);
2. bf16 autocast against fp32 on the same batch and weights, per model: the loss components (CE, energy, GReg
   penalty, total) and the parameter gradients (relative L2 error and cosine of the flattened gradient), each
   against the tolerances of :data:`BF16_TOL`; the verdict says whether bf16 training is safe;
3. a timed slice of a CIFAR-10-shaped WRN-40-2 GReg+ epoch: synthetic uint8 tensors of the real shapes (50,000 ID
   images, the 300,000-image auxiliary pool, both 32x32x3, on the device), the suite's batch, candidate count
   (pool / |D_in| x B) and cluster count, our step against the official-style step (per-sample PIL transforms,
   Jacobian penalty, scikit-learn k-means) on the same device, and the projected epoch time of each;
4. the GPU-busy fraction of our GReg+ step: the union of the CUDA kernel intervals recorded by ``torch.profiler``
   over a few steps, divided by their unprofiled wall time;
5. the projected wall time of every stage of ``dvc repro report_cifar10`` on one device, from the measured step
   times and the suite's params (a table per stage kind; the approximations are stated in the table).

Without CUDA (and without ``--smoke``) it says so in one line and runs the same script with ``--device cpu
--smoke``: tiny sizes, every code path except the CUDA-only timing, so the script cannot rot unnoticed.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from greg_ood.run import config as C
from greg_ood import losses as L
from greg_ood import methods as M
from greg_ood import models as MD
from greg_ood import registry
from greg_ood.data import DATASETS, DeviceArraySource
from greg_ood.scores import energy as energy_of
from . import step_cost
from .measure import base_parser, machine_info, median, sync, timeit, write_result
from .official import official_penalty, official_select, pil_batch, pil_transform
from .gpu_check_report import write_markdown

#: bf16 autocast is accepted when every loss component is within ``loss_rtol`` (relative) of fp32 and the flattened
#: parameter gradient has a relative L2 error <= ``grad_rel_l2`` and a cosine >= ``grad_cos`` with fp32's
BF16_TOL = {"loss_rtol": 5e-2, "grad_rel_l2": 0.10, "grad_cos": 0.99}
SUITE = "cifar10"
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
#: sizes of a full check and of the smoke run (CPU, seconds)
FULL = dict(models=["wrn40_2", "resnet18", "densenet100"], slice_arch="wrn40_2", n_id=50000, n_aux=300000,
            slice_steps=40, official_steps=10, profile_steps=5)
SMOKE = dict(models=["small_cnn"], slice_arch="small_cnn", n_id=64, n_aux=384, slice_steps=1, official_steps=1,
             profile_steps=1, batch=4)


# ----------------------------------------------------------------------------------------------------- bf16
def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().reshape(-1) for p in model.parameters() if p.grad is not None])


def bf16_check(arch: str, device: torch.device, batch: int, channels: int = 3, size: int = 32) -> dict:
    """One GReg step (no optimiser step) in fp32 and under bf16 autocast, same weights and batch; compares the
    loss components and the parameter gradients against :data:`BF16_TOL`."""
    torch.manual_seed(0)
    model = MD.build(arch, 10, in_channels=channels).to(device).train()
    x_id = torch.randn(batch, channels, size, size, device=device)
    y_id = torch.randint(0, 10, (batch,), device=device)
    x_aux = torch.randn(batch, channels, size, size, device=device)
    loss = M.MethodLoss.of("greg")  # the paper's default margins and weights
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = {}
    for name, ctx in (("fp32", nullcontext), ("bf16", lambda: torch.autocast(device.type, dtype=torch.bfloat16))):
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        with ctx():
            total, logs = M.training_step(model, x_id, y_id, x_aux, loss)
        total.backward()
        runs[name] = ({k: float(logs[k]) for k in ("ce", "energy", "grad", "total")}, _grads(model))
    model.load_state_dict(state)
    return {"arch": arch, "batch": batch, **compare_to_fp32(*runs["fp32"], *runs["bf16"])}


def rel_l2(ref: torch.Tensor, other: torch.Tensor) -> float:
    """``||other - ref|| / ||ref||`` of the flattened tensors (``ref`` = 0 counts as norm 1e-12)."""
    return float((other - ref).norm() / ref.norm().clamp_min(1e-12))


def compare_to_fp32(loss_ref: dict, grad_ref: torch.Tensor, loss: dict, grad: torch.Tensor) -> dict:
    """The loss components and the flattened parameter gradient of a run against fp32's, judged by
    :data:`BF16_TOL`: each loss within ``loss_rtol`` (or 1e-6 absolute), the gradient's relative L2 error and cosine
    within ``grad_rel_l2`` / ``grad_cos``."""
    out = {"tolerance": BF16_TOL, "loss": {}}
    ok = True
    for k in loss_ref:
        rel = abs(loss_ref[k] - loss[k]) / max(abs(loss_ref[k]), 1e-8)
        out["loss"][k] = {"fp32": loss_ref[k], "bf16": loss[k], "rel_diff": rel}
        ok &= rel <= BF16_TOL["loss_rtol"] or abs(loss_ref[k] - loss[k]) <= 1e-6
    err = rel_l2(grad_ref, grad)
    cos = float(F.cosine_similarity(grad_ref, grad, dim=0))
    out["grad"] = {"rel_l2": err, "cosine": cos, "numel": int(grad_ref.numel())}
    out["pass"] = bool(ok and err <= BF16_TOL["grad_rel_l2"] and cos >= BF16_TOL["grad_cos"])
    return out


# ----------------------------------------------------------------------------------------------------- epoch slice
class EpochSlice:
    """A CIFAR-10-shaped GReg+ training set-up on ``device`` with synthetic data of the real shapes: our step (on-device
    augmentation, energy-based k-means sampling, single-forward penalty) and the official-style step."""

    def __init__(self, arch: str, device: torch.device, *, n_id: int, n_aux: int, batch: int, n_clusters: int,
                 m_in: float, m_out: float):
        rng = np.random.default_rng(0)
        self.device, self.batch, self.k, self.m_in, self.m_out = device, batch, n_clusters, m_in, m_out
        self.candidates = max(batch, round(n_aux / n_id * batch))  # the official rule C = |pool| / |D_in| x B
        self.id_imgs = rng.integers(0, 256, size=(n_id, 32, 32, 3), dtype=np.uint8)
        self.id_lab = rng.integers(0, 10, size=n_id).astype(np.int64)
        self.aux_imgs = rng.integers(0, 256, size=(n_aux, 32, 32, 3), dtype=np.uint8)
        common = dict(device=device, mean=CIFAR_MEAN, std=CIFAR_STD, crop_padding=4, flip=True, seed=0)
        self.src_id = DeviceArraySource(self.id_imgs, self.id_lab, batch_size=batch, stream="id", **common)
        self.src_cand = DeviceArraySource(self.aux_imgs, None, batch_size=self.candidates, stream="cand", **common)
        torch.manual_seed(0)
        self.model = MD.build(arch, 10).to(device).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
        self.loss = M.MethodLoss.of("greg_plus", m_in=m_in, m_out=m_out)
        self.gen = torch.Generator(device=device)
        self.tf = pil_transform(32, CIFAR_MEAN, CIFAR_STD)
        self.i = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.src_id.steps_per_epoch

    def _apply(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def ours(self) -> None:
        self.i += 1
        x_id, y_id = self.src_id.batch(0, self.i % self.src_id.steps_per_epoch)
        cands, _ = self.src_cand.batch(0, self.i % self.src_cand.steps_per_epoch)
        self.gen.manual_seed(self.i)
        idx = M.select_auxiliary(self.model, cands, self.batch, n_clusters=self.k, n_init=3, two_way=True,
                                 generator=self.gen)
        self._apply(M.training_step(self.model, x_id, y_id, cands[idx], self.loss)[0])

    def official(self) -> None:
        """The official code's GReg+ step: PIL transforms per sample, scikit-learn k-means on host features, a
        second forward inside the Jacobian of the hinge."""
        rng = np.random.default_rng(self.i)
        self.i += 1
        ii = rng.integers(0, len(self.id_imgs), size=self.batch)
        x_id = pil_batch(self.id_imgs, ii, self.tf, self.device)
        cands = pil_batch(self.aux_imgs, rng.integers(0, len(self.aux_imgs), size=self.candidates), self.tf,
                          self.device)
        x = torch.cat([x_id, cands[official_select(self.model, cands, self.batch, self.k)]])
        logits = self.model(x)
        e = energy_of(logits)
        b = self.batch
        loss = F.cross_entropy(logits[:b], torch.as_tensor(self.id_lab[ii], device=self.device))
        w = self.loss.cfg
        loss = loss + w.lambda_energy * L.energy_margin_loss(e[:b], e[b:], self.m_in, self.m_out)
        self._apply(loss + w.lambda_grad * official_penalty(self.model, x, b, self.m_in, self.m_out))


def merged_busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (overlapping kernels on several streams count once)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            total += 0.0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (0.0 if cur_e is None else cur_e - cur_s)


def busy_fraction(step: Callable[[], None], device: torch.device, steps: int, step_s: float) -> dict:
    """GPU-busy fraction of ``step``: CUDA kernel time per step (profiler, union of kernel intervals) over the
    unprofiled median step time ``step_s``. On a CPU device the profiler runs but there is nothing to measure."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync(device)
    kernels = [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
    if device.type != "cuda":
        return {"fraction": None, "reason": "no CUDA device", "profiled_steps": steps}
    per_step_s = merged_busy_us(kernels) / steps / 1e6
    return {"fraction": min(1.0, per_step_s / step_s), "kernel_s_per_step": per_step_s, "step_s": step_s,
            "kernels": len(kernels), "profiled_steps": steps}


def epoch_slice(device: torch.device, *, arch: str, n_id: int, n_aux: int, batch: int, n_clusters: int,
                m_in: float, m_out: float, slice_steps: int, official_steps: int, profile_steps: int,
                log=print) -> dict:
    es = EpochSlice(arch, device, n_id=n_id, n_aux=n_aux, batch=batch, n_clusters=n_clusters, m_in=m_in, m_out=m_out)
    warm = 0 if slice_steps <= 1 else 2
    ours = timeit(es.ours, device, warm, slice_steps)
    official = timeit(es.official, device, min(warm, 1), official_steps)
    out = {"arch": arch, "n_id": n_id, "n_aux": n_aux, "batch": batch, "candidates": es.candidates,
           "n_clusters": n_clusters, "steps_per_epoch": es.steps_per_epoch,
           "ours_s_per_step": median(ours), "official_s_per_step": median(official),
           "ours_steps_timed": len(ours), "official_steps_timed": len(official)}
    out["ours_epoch_s"] = out["ours_s_per_step"] * es.steps_per_epoch
    out["official_epoch_s"] = out["official_s_per_step"] * es.steps_per_epoch
    out["speedup"] = out["official_s_per_step"] / out["ours_s_per_step"]
    out["busy"] = busy_fraction(es.ours, device, profile_steps, out["ours_s_per_step"])
    log(f"gpu-check: {arch} GReg+ slice: ours {out['ours_s_per_step']:.4f} s/step, official-style "
        f"{out['official_s_per_step']:.4f} s/step, epoch {out['ours_epoch_s'] / 60:.1f} vs "
        f"{out['official_epoch_s'] / 60:.1f} min")
    return out


# ----------------------------------------------------------------------------------------------------- projection
def _count(name: str, opts: dict, split: str = "test") -> int:
    return int(opts.get("count") or DATASETS[name].expected_counts[split])


def project_suite(cfg: C.Config, suite: str, bench_models: dict) -> dict:
    """Projected single-device wall time of every stage of ``report_<suite>``, from the benchmark's per-model step
    times (measured at B = the suite's fine-tuning batch) and evaluation throughput. Approximations: a pretraining
    step of 128 images costs an energy step (64 ID + 64 aux); a DOS step costs an energy step plus GReg+'s
    selection overhead (GReg+ - GReg); step time scales linearly with the batch; evaluation costs one forward
    per image and score group (ODIN and Mahalanobis: 4 forward-equivalents each); selection and certification
    are forwards over their images. Stage start-up and downloads are not included."""
    s = cfg.suite(suite)
    ds = cfg.params.datasets
    n_train = _count(s.data.id.dataset, ds.get(s.data.id.dataset, {}), s.data.id.train_split)
    n_test = _count(s.data.id.dataset, ds.get(s.data.id.dataset, {}), s.data.id.test_split)
    n_ood = sum(_count(o.dataset, ds.get(o.dataset, {})) for o in s.data.ood)
    n_aux = _count(s.data.aux.dataset, ds.get(s.data.aux.dataset, {}), s.data.aux.split)
    rows: dict[str, dict] = {}

    def add(kind: str, arch: str, steps: float, s_per_step: Optional[float], note: str) -> None:
        r = rows.setdefault(kind, {"stages": 0, "steps": 0.0, "seconds": 0.0, "missing": [], "note": note})
        if note != r["note"]:
            r["note"] = "; ".join(dict.fromkeys(r["note"].split("; ") + [note]))
        r["stages"] += 1
        r["steps"] += steps
        if s_per_step is None:
            r["missing"] = sorted(set(r["missing"]) | {arch})
        else:
            r["seconds"] += steps * s_per_step

    def step_s(arch: str, kind: str) -> Optional[float]:
        st = (bench_models.get(arch) or {}).get("seconds_per_step", {})
        if kind == "dos":
            parts = [st.get("energy"), st.get("greg_plus"), st.get("greg")]
            return None if None in parts else parts[0] + parts[1] - parts[2]
        return st.get(kind)

    def per_image(arch: str) -> Optional[float]:
        ips = (bench_models.get(arch) or {}).get("eval_images_per_s")
        return 1.0 / ips if ips else None

    ref_b = s.train.batch_size
    for arch in s.archs:
        spe = math.ceil(n_train / s.pretrain.batch_size)
        e = step_s(arch, "energy")
        add("pretrain", arch, s.pretrain.epochs * spe, None if e is None else e * s.pretrain.batch_size / (2 * ref_b),
            "CE steps at the pretraining batch (energy-step cost)")
        add("select", arch, n_aux, per_image(arch), "one forward over the auxiliary pool")
    for ex in cfg.experiments(suite):
        t = ex.train
        method = registry.get(ex.method)
        kind = ("greg_plus" if method.selection.score == "energy" else "dos") if method.selection else \
            ("greg" if t.loss.lambda_grad > 0 else "energy")
        spe = t.steps_per_epoch or math.ceil(n_train / t.batch_size)
        base = step_s(ex.arch, kind)
        add(f"train ({ex.group}, {kind} step)", ex.arch, t.epochs * spe, None if base is None else
            base * t.batch_size / ref_b, f"{t.epochs} epochs x {spe} steps at batch {t.batch_size}")
        heavy = sum(4 for sc in s.eval.scores if sc in ("odin", "mahalanobis"))
        groups = 1 + heavy
        add("evaluate", ex.arch, (n_test + n_ood) * groups + s.eval.mahalanobis_fit_count * ("mahalanobis" in
                                                                                             s.eval.scores),
            per_image(ex.arch), f"{n_test} ID + {n_ood} OOD images x {groups} forward-equivalents")
    for arch in s.archs:
        n_cert = s.certify.count * len(s.certify.methods) * len(s.seeds)
        add("certify", arch, 3 * n_cert, per_image(arch), "3 forward-equivalents per certified input")
    total = sum(r["seconds"] for r in rows.values())
    return {"suite": suite, "rows": rows, "total_s": total,
            "complete": not any(r["missing"] for r in rows.values()),
            "counts": {"train": n_train, "test": n_test, "ood": n_ood, "aux": n_aux}}


# ----------------------------------------------------------------------------------------------------- main
def run(device: torch.device, *, smoke: bool, out: Optional[Path], params: Path = Path("params.yaml"),
        log=print) -> dict:
    sizes = dict(SMOKE if smoke else FULL)
    cfg = C.load(params)
    tr = cfg.train_cfg(SUITE, "greg_plus")
    batch = sizes.pop("batch", tr.batch_size)
    t0 = time.time()
    result = {"machine": machine_info(device), "smoke": smoke, "suite": SUITE, "batch": batch,
              "bf16_tolerance": BF16_TOL}
    result["bench"] = step_cost.run(device=str(device), smoke=smoke, out=None, models=sizes["models"],
                                    batch=None if smoke else batch, log=log)
    result["bf16"] = {a: bf16_check(a, device, batch, *step_cost.MODELS[a]) for a in sizes["models"]}
    result["bf16_verdict"] = ("bf16 autocast is within tolerance for every model" if
                              all(v["pass"] for v in result["bf16"].values()) else
                              "bf16 autocast is NOT within tolerance: keep fp32 training")
    result["slice"] = epoch_slice(device, arch=sizes["slice_arch"], n_id=sizes["n_id"], n_aux=sizes["n_aux"],
                                  batch=batch, n_clusters=min(tr.sampling.n_clusters, batch),
                                  m_in=tr.loss.m_in, m_out=tr.loss.m_out, slice_steps=sizes["slice_steps"],
                                  official_steps=sizes["official_steps"], profile_steps=sizes["profile_steps"],
                                  log=log)
    timed = result["bench"]["models"]
    if smoke:  # every architecture stands in as the one smoke model, so that the projection's arithmetic runs
        timed = {a: timed["small_cnn"] for a in cfg.suite(SUITE).archs}
    result["projection"] = project_suite(cfg, SUITE, timed)
    result["wall_s"] = time.time() - t0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = out / ("gpu-check-smoke" if smoke else "gpu-check")
        write_result(result, (stem.with_suffix(".json"), stem.with_suffix(".md")), write_markdown)
        log(f"gpu-check: wrote {stem}.json and {stem}.md ({result['wall_s']:.0f} s)")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    ap = base_parser("python -m bench.gpu_check", __doc__, smoke_help="tiny sizes: checks that every part runs",
                     device_help="auto | cuda | cuda:N | cpu (auto: CUDA when present)")
    ap.add_argument("--params", default="params.yaml", help="params file with the cifar10 suite")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if a.device == "auto":
        a.device = "cuda" if cuda else "cpu"
    if a.device.startswith("cuda") and not cuda:
        raise SystemExit(f"--device {a.device}: CUDA is not available on this machine")
    if not cuda and not a.smoke:
        print("gpu-check: no CUDA device on this machine; running the CPU smoke check instead "
              "(--device cpu --smoke)", flush=True)
        a.smoke = True
    run(torch.device(a.device), smoke=a.smoke, out=Path(a.out), params=Path(a.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
