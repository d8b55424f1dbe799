"""Step-cost benchmark of the method core on the current device (issue #5, measurement part).

    python -m greg_ood.bench [--quick] [--smoke] [--out reports/bench] [--models small_cnn wrn40_2 ...] [--amp]

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
background load on a shared machine. Our steps include our data path (batched on-device crop/flip/normalise from a uint8 tensor,
:class:`greg_ood.data.DeviceArraySource`), so "incl. data" ratios compare whole steps; compute-only numbers are
reported as well. Also: the sampler alone (ours vs scikit-learn on the same candidate features, inertia ratio), eval
throughput (images/s), peak memory (process RSS on CPU, sampled every 2 ms; ``torch.cuda.max_memory_allocated`` on
CUDA). ``--amp`` (CUDA only) runs the steps under bf16 autocast and validates loss components against fp32 on the
same batch (relative tolerance ``AMP_RTOL``). Writes ``<out>/<device>.json`` and ``<out>/<device>.md``.

Targets (pass/fail in the report): GReg step <= 1.15 x 3.3 x energy step; GReg (and GReg+) step <= 0.75 x the
official-style step; sampling <= 10 % of a GReg+ step; sampler >= 5x faster than scikit-learn at inertia <= 1.02x.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import losses as L
from . import methods as M
from . import models as MD
from . import sampling as S
from .scores import energy as energy_of

MODELS = {"small_cnn": (1, 28), "wrn40_2": (3, 32), "resnet18": (3, 32), "densenet100": (3, 32)}
TARGETS = {"greg_over_energy": 1.15 * 3.3, "greg_over_official": 0.75, "sampling_frac": 0.10, "sampler_speedup": 5.0,
           "inertia_ratio": 1.02}
AMP_RTOL = 5e-2
K = 10
MEAN = {1: [0.286], 3: [0.491, 0.482, 0.447]}
STD = {1: [0.353], 3: [0.247, 0.243, 0.262]}


# ----------------------------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # pragma: no cover - psutil missing
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so an RSS peak belongs to the block being measured."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


class PeakMemory:
    """Peak memory during a block: CUDA -> max_memory_allocated; CPU -> process RSS polled by a thread (after
    ``malloc_trim`` so memory freed by earlier blocks does not count)."""

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval, self.peak = device, interval, 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _malloc_trim()
            self.peak = _rss()
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, _rss())
        return False


def _timeit(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def _median(ts: list[float]) -> float:
    return float(statistics.median(ts))


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    msg = str(e).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg


# ------------------------------------------------------------------------------------------------- official style
def _pil_transform(channels: int, size: int):
    from ._torchvision_compat import import_torchvision

    T = import_torchvision().transforms
    return T.Compose([T.RandomCrop(size, padding=4 if size >= 32 else 2), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(MEAN[channels], STD[channels])])


def _pil_batch(images: np.ndarray, idx: np.ndarray, tf, device) -> torch.Tensor:
    from PIL import Image

    xs = []
    for i in idx:
        a = images[i]
        xs.append(tf(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)))
    return torch.stack(xs).to(device, non_blocking=True)


def _official_penalty(model, x, n_in, m_in, m_out):
    """The authors' term: second forward inside jacobian of the hinge closure, row L2 norms, mean over rows."""

    def g(inp):
        e = energy_of(model(inp))
        return -F.relu(m_in - e[:n_in]).mean() + F.relu(e[n_in:] - m_out).mean()

    J = torch.autograd.functional.jacobian(g, x, create_graph=True)
    return J.reshape(x.shape[0], -1).norm(dim=1).mean()


def _official_select(model, cands, n_select, n_clusters, n_init=3, two_way=True):
    """The official ``clusterAndChooseSamples`` path: eval forward without grad, then :func:`_official_select_from`."""
    was = model.training
    model.eval()
    with torch.no_grad():
        z = model.features(cands)
        w = energy_of(model.head(z))
    model.train(was)
    return _official_select_from(w, z, n_select, n_clusters, n_init=n_init, two_way=two_way)


def _official_select_from(w, z, n_select, n_clusters, n_init=3, spt=0, ept=None, two_way=True):
    """Host copies, per-sample L2 normalisation, scikit-learn KMeans, per-cluster numpy loop, random.sample top-up."""
    from sklearn.cluster import KMeans

    w = np.array(w.float().tolist())
    order = np.argsort(w)
    prox = order[spt:ept]
    rep = F.normalize(z.float().cpu(), dim=-1).numpy()[prox]
    k = min(n_clusters, n_select)
    lab = KMeans(n_clusters=k, n_init=n_init).fit(rep).labels_
    q = 1 if k > n_select else int(n_select / k)
    wp = w[prox]
    picked = []
    for c in range(k):
        members = np.where(lab == c)[0]
        if len(members) <= q:
            picked.extend(prox[members])
        else:
            srt = np.argsort(wp[members])
            add = prox[members[srt[:q]]]
            if two_way:
                add = np.unique(np.concatenate([add, prox[members[srt[-q:]]]]))
            picked.extend(add)
    target = n_select * (2 if two_way else 1)
    if target > len(picked):
        picked.extend(random.sample(sorted(set(prox.tolist()) - set(int(i) for i in picked)), k=target - len(picked)))
    return torch.as_tensor(np.asarray(picked, dtype=np.int64), device=z.device)


# --------------------------------------------------------------------------------------------------------- one model
def bench_model(name: str, device: torch.device, *, B: int, C: int, k: int, warmup: int, repeats: int,
                amp: bool, eval_batches: int, eval_bs: int, sampler_repeats: int, log=print) -> dict:
    from .data import DeviceArraySource

    channels, size = MODELS[name]
    torch.manual_seed(0)
    rng = np.random.RandomState(0)
    n_pool = max(4 * C, 8 * B)
    id_imgs = rng.randint(0, 256, size=(n_pool, size, size, channels)).astype(np.uint8)
    id_lab = rng.randint(0, K, size=n_pool).astype(np.int64)
    aux_imgs = rng.randint(0, 256, size=(n_pool, size, size, channels)).astype(np.uint8)
    pad = 4 if size >= 32 else 2
    src_id = DeviceArraySource(id_imgs, id_lab, batch_size=B, device=device, mean=MEAN[channels], std=STD[channels],
                               crop_padding=pad, flip=True, seed=0, stream="id")
    src_aux = DeviceArraySource(aux_imgs, None, batch_size=B, device=device, mean=MEAN[channels], std=STD[channels],
                                crop_padding=pad, flip=True, seed=0, stream="aux")
    src_cand = DeviceArraySource(aux_imgs, None, batch_size=C, device=device, mean=MEAN[channels],
                                 std=STD[channels], crop_padding=pad, flip=True, seed=0, stream="cand")
    model = MD.build(name, K, in_channels=channels).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
    m_in, m_out = -25.0, -7.0
    p_energy = M.MethodLoss.of("energy", lambda_grad=0.0)
    p_greg = M.MethodLoss.of("greg")
    p_plus = M.MethodLoss.of("greg_plus")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    counter = {"i": 0}
    gen = torch.Generator(device=device)

    def nxt(src):
        counter["i"] += 1
        return src.batch(0, counter["i"] % src.steps_per_epoch)

    def ours(params, with_select):
        def step():
            x_id, y_id = nxt(src_id)
            if with_select:
                cands, _ = nxt(src_cand)
                gen.manual_seed(counter["i"])
                with autocast():
                    idx = M.select_auxiliary(model, cands, B, n_clusters=k, n_init=3, two_way=True, generator=gen)
                x_aux = cands[idx]
            else:
                x_aux, _ = nxt(src_aux)
            with autocast():
                loss, logs = M.training_step(model, x_id, y_id, x_aux, params)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    tf = _pil_transform(channels, size)

    def official(with_select):
        def step():
            counter["i"] += 1
            ii = rng.randint(0, n_pool, size=B)
            x_id = _pil_batch(id_imgs, ii, tf, device)
            y_id = torch.as_tensor(id_lab[ii], device=device)
            if with_select:
                cands = _pil_batch(aux_imgs, rng.randint(0, n_pool, size=C), tf, device)
                with autocast():
                    idx = _official_select(model, cands, B, k)
                x_aux = cands[idx]
            else:
                x_aux = _pil_batch(aux_imgs, rng.randint(0, n_pool, size=B), tf, device)
            x = torch.cat([x_id, x_aux])
            with autocast():
                logits = model(x)
                e = energy_of(logits)
                loss = F.cross_entropy(logits[:B], y_id) + 0.1 * L.energy_margin_loss(e[:B], e[B:], m_in, m_out)
                loss = loss + 1.0 * _official_penalty(model, x, B, m_in, m_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    res: dict = {"params": MD.count_parameters(model), "input": [channels, size, size], "seconds_per_step": {},
                 "step_times": {}, "peak_memory_bytes": {}}
    steps = {"energy": ours(p_energy, False), "greg": ours(p_greg, False), "greg_plus": ours(p_plus, True),
             "official_greg": official(False), "official_greg_plus": official(True)}
    res["config"] = {"B": B, "C": C, "k": k, "warmup": warmup, "repeats": repeats, "interleaved": True}
    res["failed"] = {}
    peaks = {key: 0 for key in steps}
    times: dict[str, list[float]] = {key: [] for key in steps}

    def attempt(key, timed: bool) -> None:
        """One step of ``key``; out of memory marks the method failed (it is then skipped)."""
        try:
            with PeakMemory(device) as pm:
                _sync(device)
                t = time.perf_counter()
                steps[key]()
                _sync(device)
                dt = time.perf_counter() - t
        except (RuntimeError, MemoryError) as e:  # out of memory (CPU allocator, --max-memory-gb, CUDA OOM)
            if not _is_oom(e):
                raise
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            res["failed"][key] = f"out of memory: {str(e).splitlines()[0][:160]}"
            log(f"  {name:12s} {key:20s} out of memory, skipped")
            return
        peaks[key] = max(peaks[key], pm.peak)
        if timed:
            times[key].append(dt)

    # Round-robin over the methods (warm-up rounds, then timed rounds), so that every method sees the same
    # background load on a shared machine; per method the median of its timed steps is reported.
    for r in range(warmup + repeats):
        for key in steps:
            if key not in res["failed"]:
                attempt(key, timed=r >= warmup)
    for key in steps:
        ok = key not in res["failed"] and times[key]
        res["seconds_per_step"][key] = _median(times[key]) if ok else None
        res["step_times"][key] = times[key]
        res["peak_memory_bytes"][key] = peaks[key] if ok else None
        if ok:
            log(f"  {name:12s} {key:20s} {_median(times[key]):8.4f} s/step  (peak {peaks[key] / 2**30:.2f} GiB)")

    # data path alone (to report compute-only numbers)
    def data_ours():
        nxt(src_id)
        nxt(src_aux)

    def data_official():
        _pil_batch(id_imgs, rng.randint(0, n_pool, size=B), tf, device)
        _pil_batch(aux_imgs, rng.randint(0, n_pool, size=B), tf, device)

    def data_ours_plus():
        nxt(src_id)
        nxt(src_cand)

    def data_official_plus():
        _pil_batch(id_imgs, rng.randint(0, n_pool, size=B), tf, device)
        _pil_batch(aux_imgs, rng.randint(0, n_pool, size=C), tf, device)

    res["data_seconds"] = {
        "ours": _median(_timeit(data_ours, device, 1, max(3, repeats))),
        "official": _median(_timeit(data_official, device, 1, max(3, repeats))),
        "ours_plus": _median(_timeit(data_ours_plus, device, 1, max(3, repeats))),
        "official_plus": _median(_timeit(data_official_plus, device, 1, max(3, repeats)))}

    # sampler alone, on the features of real candidate forwards
    res["sampler"] = bench_sampler(model, src_cand, device, B=B, k=k, repeats=sampler_repeats)
    log(f"  {name:12s} sampler: ours {res['sampler']['ours_select_s'] * 1e3:.1f} ms, scikit-learn "
        f"{res['sampler']['sklearn_select_s'] * 1e3:.1f} ms, inertia ratio {res['sampler']['inertia_ratio']:.4f}")

    # eval throughput
    model.eval()
    xs = [src_id.batch(0, i % src_id.steps_per_epoch)[0] for i in range(1)]
    xe = torch.cat(xs).repeat(max(1, eval_bs // B), 1, 1, 1)[:eval_bs]

    def ev():
        with torch.inference_mode(), autocast():
            for _ in range(eval_batches):
                model(xe)

    ts = _timeit(ev, device, 1, max(2, repeats // 2))
    res["eval_images_per_s"] = eval_batches * xe.shape[0] / _median(ts)
    model.train()
    log(f"  {name:12s} eval {res['eval_images_per_s']:.0f} images/s")
    if amp:
        res["amp_check"] = amp_check(model, src_id, src_aux, device)
    res["ratios"], res["targets"] = _ratios(res)
    return res


def bench_sampler(model, src_cand, device, *, B: int, k: int, repeats: int) -> dict:
    from sklearn.cluster import KMeans

    ours_t, sk_t, ours_k, sk_k, ratios = [], [], [], [], []
    was = model.training
    for r in range(repeats):
        cands, _ = src_cand.batch(1, r % src_cand.steps_per_epoch)
        model.eval()
        with torch.inference_mode():
            z = model.features(cands)
            e = energy_of(model.head(z))
        model.train(was)
        z, e = z.float().clone(), e.float().clone()
        g = torch.Generator(device=device).manual_seed(r)
        _sync(device)
        t = time.perf_counter()
        S.energy_cluster_select(e, z, k, B, two_way=True, n_init=3, generator=g)
        _sync(device)
        ours_t.append(time.perf_counter() - t)
        # kmeans alone (same normalised features), ours vs scikit-learn, and the inertia of each
        rep = S.normalize_features(z, "norm")
        kk = min(k, B)
        g.manual_seed(1000 + r)
        _sync(device)
        t = time.perf_counter()
        _, _, inertia = S.kmeans(rep, kk, n_init=3, generator=g)
        inertia = float(inertia)
        ours_k.append(time.perf_counter() - t)
        t = time.perf_counter()
        host = F.normalize(z.float().cpu(), dim=-1).numpy()
        km = KMeans(n_clusters=kk, n_init=3, random_state=r).fit(host)
        sk_k.append(time.perf_counter() - t)
        ratios.append(inertia / float(km.inertia_))
        # the official selection (host copy + KMeans + numpy loop + top-up), like for like with ours
        t = time.perf_counter()
        _official_select_from(e, z, B, k)
        _sync(device)
        sk_t.append(time.perf_counter() - t)
    out = {"ours_select_s": _median(ours_t), "sklearn_select_s": _median(sk_t), "ours_kmeans_s": _median(ours_k),
           "sklearn_kmeans_s": _median(sk_k), "inertia_ratio": float(np.mean(ratios)),
           "inertia_ratio_max": float(np.max(ratios)), "n_candidates": int(src_cand.batch_size), "k": min(k, B),
           "feature_dim": int(model.feature_dim), "repeats": repeats}
    out["speedup_select"] = out["sklearn_select_s"] / max(out["ours_select_s"], 1e-12)
    out["speedup_kmeans"] = out["sklearn_kmeans_s"] / max(out["ours_kmeans_s"], 1e-12)
    return out


def amp_check(model, src_id, src_aux, device) -> dict:
    """Loss components of one GReg step in fp32 and under bf16 autocast on the same batch (no optimiser step)."""
    x_id, y_id = src_id.batch(2, 0)
    x_aux, _ = src_aux.batch(2, 0)
    p = M.MethodLoss.of("greg", m_in=-25.0, m_out=-7.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _, a = M.training_step(model, x_id, y_id, x_aux, p)
    model.load_state_dict(state)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        _, b = M.training_step(model, x_id, y_id, x_aux, p)
    model.load_state_dict(state)
    out = {"rtol": AMP_RTOL}
    ok = True
    for key in ("ce", "energy", "grad", "total"):
        fa, fb = float(a[key]), float(b[key])
        rel = abs(fa - fb) / max(abs(fa), 1e-8)
        out[key] = {"fp32": fa, "bf16": fb, "rel_diff": rel}
        ok &= rel <= AMP_RTOL or abs(fa - fb) <= 1e-6
    out["pass"] = bool(ok)
    return out


def _div(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def _ratios(res: dict) -> tuple[dict, dict]:
    s = res["seconds_per_step"]
    d = res["data_seconds"]
    sp = res["sampler"]

    def minus(a, b):
        return None if a is None else a - b

    r = {
        "greg_over_energy": _div(s["greg"], s["energy"]),
        "greg_over_official": _div(s["greg"], s["official_greg"]),
        "greg_plus_over_official": _div(s["greg_plus"], s["official_greg_plus"]),
        "greg_over_official_compute": _div(minus(s["greg"], d["ours"]), minus(s["official_greg"], d["official"])),
        "greg_plus_over_official_compute": _div(minus(s["greg_plus"], d["ours_plus"]),
                                                minus(s["official_greg_plus"], d["official_plus"])),
        "greg_plus_over_greg": _div(s["greg_plus"], s["greg"]),
        "sampling_frac_of_greg_plus": _div(sp["ours_select_s"], s["greg_plus"]),
        "sampler_speedup_select": sp["speedup_select"],
        "sampler_speedup_kmeans": sp["speedup_kmeans"],
        "inertia_ratio": sp["inertia_ratio"],
    }

    def target(value, limit, upper=True):
        ok = None if value is None else (value <= limit if upper else value >= limit)
        return {"value": value, "limit": limit, "pass": ok}

    t = {
        "greg_step_le_1.15x3.3x_energy": target(r["greg_over_energy"], TARGETS["greg_over_energy"]),
        "greg_step_le_0.75x_official": target(r["greg_over_official"], TARGETS["greg_over_official"]),
        "greg_plus_step_le_0.75x_official": target(r["greg_plus_over_official"], TARGETS["greg_over_official"]),
        "sampling_le_10pct_of_greg_plus": target(r["sampling_frac_of_greg_plus"], TARGETS["sampling_frac"]),
        "sampler_ge_5x_sklearn": target(r["sampler_speedup_select"], TARGETS["sampler_speedup"], upper=False),
        "inertia_le_1.02x_sklearn": target(r["inertia_ratio"], TARGETS["inertia_ratio"]),
    }
    return r, t


# ------------------------------------------------------------------------------------------------------------ report
def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return device.type


def machine_info(device: torch.device) -> dict:
    import sklearn

    info = {"device": str(device), "slug": device_slug(device), "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def _fmt_s(v: Optional[float]) -> str:
    if v is None:
        return "OOM"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def _fmt(v: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def write_markdown(result: dict, path: Path) -> None:
    mi = result["machine"]
    cfg = result["config"]
    amp = cfg.get("amp")
    lines = [f"# Step-cost benchmark: {mi['slug']}", "",
             f"* Machine: {mi['cpu_model']}, {mi['cpu_count']} CPU cores, torch {mi['torch']} with "
             f"{mi['torch_threads']} intra-op thread(s)"
             + (f", GPU {mi['gpu']} (CUDA {mi['cuda']})" if "gpu" in mi else "")
             + f", scikit-learn {mi['sklearn']}, Python {mi['python']}; {mi['time']}.",
             f"* Mode: {'quick' if cfg['quick'] else 'full'}{' smoke' if cfg['smoke'] else ''}; median of the timed "
             f"steps after warm-up (per model below); {'bf16 autocast' if amp else 'fp32'}.",
             "* Batch (per model, column B): B ID + B random aux for energy and GReg; GReg+: C = 6B candidates, "
             f"k = min(64, B), two-way -> 2B aux. K = {K}. Margins -25 / -7, λ_S = 0.1, λ_∇S = 1 (official reduction).",
             f"* Load average at start / end: {mi.get('loadavg_start')} / {mi.get('loadavg_end')}."]
    if result.get("note"):
        lines.append(f"* Note: {result['note']}")
    lines += ["", "## Seconds per training step (median)", "",
              "| model | params | B / C / k | timed (warm-up) | energy | GReg | GReg+ | official GReg | official GReg+ "
              "| GReg/energy | GReg/official | GReg+/official | eval img/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        s, q, c = r["seconds_per_step"], r["ratios"], r["config"]
        lines.append(f"| {name} | {r['params'] / 1e6:.2f} M | {c['B']} / {c['C']} / {c['k']} | {c['repeats']} "
                     f"({c['warmup']}) | {_fmt_s(s['energy'])} | {_fmt_s(s['greg'])} | {_fmt_s(s['greg_plus'])} | "
                     f"{_fmt_s(s['official_greg'])} | {_fmt_s(s['official_greg_plus'])} | "
                     f"{_fmt(q['greg_over_energy'])} | {_fmt(q['greg_over_official'])} | "
                     f"{_fmt(q['greg_plus_over_official'])} | {r['eval_images_per_s']:.0f} |")
    lines += ["", "Steps include the data path (ours: batched on-device crop/flip/normalise; official: per-sample PIL "
              "transforms). Compute-only ratios subtract each side's measured data time:", "",
              "| model | data ours | data official | data ours (GReg+) | data official (GReg+) | GReg/official compute "
              "| GReg+/official compute |", "|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        d, q = r["data_seconds"], r["ratios"]
        lines.append(f"| {name} | {_fmt_s(d['ours'])} | {_fmt_s(d['official'])} | {_fmt_s(d['ours_plus'])} | "
                     f"{_fmt_s(d['official_plus'])} | {_fmt(q['greg_over_official_compute'])} | "
                     f"{_fmt(q['greg_plus_over_official_compute'])} |")
    lines += ["", "## Sampler (GReg+ selection on the model's candidate features)", "",
              "Ours: `energy_cluster_select` on the device (torch k-means, n_init 3). scikit-learn-based: host copy, "
              "`KMeans(n_init=3)`, the official per-cluster loop and top-up. Inertia ratio: our k-means vs "
              "scikit-learn's on the same normalised features.", "",
              "| model | C x feat dim | k | ours select | sklearn-based select | speedup | ours k-means | sklearn KMeans "
              "| speedup | inertia ours/sklearn (mean, max) | share of GReg+ step |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        sp = r["sampler"]
        lines.append(f"| {name} | {sp['n_candidates']} x {sp['feature_dim']} | {sp['k']} | "
                     f"{_fmt_s(sp['ours_select_s'])} | {_fmt_s(sp['sklearn_select_s'])} | {sp['speedup_select']:.1f}x | "
                     f"{_fmt_s(sp['ours_kmeans_s'])} | {_fmt_s(sp['sklearn_kmeans_s'])} | {sp['speedup_kmeans']:.1f}x | "
                     f"{sp['inertia_ratio']:.4f}, {sp['inertia_ratio_max']:.4f} | "
                     f"{_fmt(r['ratios']['sampling_frac_of_greg_plus'], '.1%')} |")
    cuda = mi["device"].startswith("cuda")
    lines += ["", f"## Memory ({'peak GPU memory allocated' if cuda else 'peak process RSS'}, GiB)", "",
              "| model | energy | GReg | GReg+ | official GReg | official GReg+ |", "|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        pm = r["peak_memory_bytes"]
        lines.append(f"| {name} | " + " | ".join(_fmt(None if pm[k] is None else pm[k] / 2**30) for k in
                                                   ("energy", "greg", "greg_plus", "official_greg",
                                                    "official_greg_plus")) + " |")
    lines += ["", "## Targets", "", "| model | target | value | limit | result |", "|---|---|---|---|---|"]
    for name, r in result["models"].items():
        for tname, t in r["targets"].items():
            res = "n/a" if t["pass"] is None else ("pass" if t["pass"] else "**fail**")
            lines.append(f"| {name} | {tname} | {_fmt(t['value'], '.3f')} | {t['limit']:.3f} | {res} |")
    amp_rows = [(n, r["amp_check"]) for n, r in result["models"].items() if "amp_check" in r]
    if amp_rows:
        lines += ["", f"## bf16 autocast vs fp32 (one GReg step, same batch; relative tolerance {AMP_RTOL})", "",
                  "| model | ce | energy | grad | total | result |", "|---|---|---|---|---|---|"]
        for n, a in amp_rows:
            lines.append(f"| {n} | " + " | ".join(f"{a[k]['rel_diff']:.2e}" for k in ("ce", "energy", "grad", "total"))
                         + f" | {'pass' if a['pass'] else '**fail**'} |")
    failed = [f"{n}/{k}: {v}" for n, r in result["models"].items() for k, v in r.get("failed", {}).items()]
    if failed:
        lines += ["", "Out of memory (not timed): " + "; ".join(failed)]
    if result.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(result["skipped"])]
    path.write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------------------------------------------------- main
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

            max_memory_gb = 0.9 * (psutil.virtual_memory().available + _rss()) / 2**30
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
            paths[0].write_text(json.dumps(result, indent=1) + "\n")
            write_markdown(result, paths[1])
    if paths is not None:
        log(f"bench: wrote {paths[0]} and {paths[1]}")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m greg_ood.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (1 warm-up + 3 timed steps)")
    ap.add_argument("--smoke", action="store_true", help="tiny batches, small_cnn only: checks that it runs")
    ap.add_argument("--out", default="reports/bench", help="output folder (default reports/bench)")
    ap.add_argument("--models", nargs="+", default=None, help=f"subset of {list(MODELS)}")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
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
