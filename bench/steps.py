"""The benchmark of one model: timed training steps (ours and official-style, interleaved), the data path alone,
the sampler against scikit-learn, evaluation throughput, peak memory, an optional bf16 check, and the ratios and
targets derived from them."""
from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from greg_ood import losses as L
from greg_ood import methods as M
from greg_ood import models as MD
from greg_ood import sampling as S
from greg_ood.scores import energy as energy_of
from .measure import PeakMemory, is_oom, median, sync, timeit
from .official import official_penalty, official_select, official_select_from, pil_batch, pil_transform

MODELS = {"small_cnn": (1, 28), "wrn40_2": (3, 32), "resnet18": (3, 32), "densenet100": (3, 32)}
TARGETS = {"greg_over_energy": 1.15 * 3.3, "greg_over_official": 0.75, "sampling_frac": 0.10, "sampler_speedup": 5.0,
           "inertia_ratio": 1.02}
AMP_RTOL = 5e-2
K = 10
MEAN = {1: [0.286], 3: [0.491, 0.482, 0.447]}
STD = {1: [0.353], 3: [0.247, 0.243, 0.262]}


def bench_model(name: str, device: torch.device, *, B: int, C: int, k: int, warmup: int, repeats: int,
                amp: bool, eval_batches: int, eval_bs: int, sampler_repeats: int, log=print) -> dict:
    from greg_ood.data import DeviceArraySource

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
    p_energy = M.MethodLoss.of("energy", lambda_grad=0.0)
    p_greg = M.MethodLoss.of("greg")
    p_plus = M.MethodLoss.of("greg_plus")
    m_in, m_out = p_greg.cfg.m_in, p_greg.cfg.m_out  # the paper's defaults (LossCfg), for the official steps
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

    tf = pil_transform(size, MEAN[channels], STD[channels])

    def official(with_select):
        def step():
            counter["i"] += 1
            ii = rng.randint(0, n_pool, size=B)
            x_id = pil_batch(id_imgs, ii, tf, device)
            y_id = torch.as_tensor(id_lab[ii], device=device)
            if with_select:
                cands = pil_batch(aux_imgs, rng.randint(0, n_pool, size=C), tf, device)
                with autocast():
                    idx = official_select(model, cands, B, k)
                x_aux = cands[idx]
            else:
                x_aux = pil_batch(aux_imgs, rng.randint(0, n_pool, size=B), tf, device)
            x = torch.cat([x_id, x_aux])
            with autocast():
                logits = model(x)
                e = energy_of(logits)
                w = p_greg.cfg
                loss = F.cross_entropy(logits[:B], y_id) + w.lambda_energy * L.energy_margin_loss(e[:B], e[B:], m_in,
                                                                                                  m_out)
                loss = loss + w.lambda_grad * official_penalty(model, x, B, m_in, m_out)
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
                sync(device)
                t = time.perf_counter()
                steps[key]()
                sync(device)
                dt = time.perf_counter() - t
        except (RuntimeError, MemoryError) as e:  # out of memory (CPU allocator, --max-memory-gb, CUDA OOM)
            if not is_oom(e):
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
        res["seconds_per_step"][key] = median(times[key]) if ok else None
        res["step_times"][key] = times[key]
        res["peak_memory_bytes"][key] = peaks[key] if ok else None
        if ok:
            log(f"  {name:12s} {key:20s} {median(times[key]):8.4f} s/step  (peak {peaks[key] / 2**30:.2f} GiB)")

    # data path alone (to report compute-only numbers)
    def data_ours(aux_source):  # one ID batch and one auxiliary batch from the device-resident sources
        return lambda: (nxt(src_id), nxt(aux_source))

    def data_official(n_aux):  # the same through per-sample PIL transforms on the host
        return lambda: (pil_batch(id_imgs, rng.randint(0, n_pool, size=B), tf, device),
                        pil_batch(aux_imgs, rng.randint(0, n_pool, size=n_aux), tf, device))

    data_fns = {"ours": data_ours(src_aux), "official": data_official(B), "ours_plus": data_ours(src_cand),
                "official_plus": data_official(C)}
    res["data_seconds"] = {k: median(timeit(fn, device, 1, max(3, repeats))) for k, fn in data_fns.items()}

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

    ts = timeit(ev, device, 1, max(2, repeats // 2))
    res["eval_images_per_s"] = eval_batches * xe.shape[0] / median(ts)
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
        sync(device)
        t = time.perf_counter()
        S.energy_cluster_select(e, z, k, B, two_way=True, n_init=3, generator=g)
        sync(device)
        ours_t.append(time.perf_counter() - t)
        # kmeans alone (same normalised features), ours vs scikit-learn, and the inertia of each
        rep = S.normalize_features(z, "norm")
        kk = min(k, B)
        g.manual_seed(1000 + r)
        sync(device)
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
        official_select_from(e, z, B, k)
        sync(device)
        sk_t.append(time.perf_counter() - t)
    out = {"ours_select_s": median(ours_t), "sklearn_select_s": median(sk_t), "ours_kmeans_s": median(ours_k),
           "sklearn_kmeans_s": median(sk_k), "inertia_ratio": float(np.mean(ratios)),
           "inertia_ratio_max": float(np.max(ratios)), "n_candidates": int(src_cand.batch_size), "k": min(k, B),
           "feature_dim": int(model.feature_dim), "repeats": repeats}
    out["speedup_select"] = out["sklearn_select_s"] / max(out["ours_select_s"], 1e-12)
    out["speedup_kmeans"] = out["sklearn_kmeans_s"] / max(out["ours_kmeans_s"], 1e-12)
    return out


def amp_check(model, src_id, src_aux, device) -> dict:
    """Loss components of one GReg step in fp32 and under bf16 autocast on the same batch (no optimiser step)."""
    x_id, y_id = src_id.batch(2, 0)
    x_aux, _ = src_aux.batch(2, 0)
    p = M.MethodLoss.of("greg")
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
