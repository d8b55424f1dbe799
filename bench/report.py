"""The benchmark's Markdown report (``<out>/<device>.md``) from its result dict."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from greg_ood.run.config import LossCfg

from .steps import AMP_RTOL, K


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
    w = LossCfg()  # the loss settings every step of the benchmark uses (the paper's defaults)
    lines = [f"# Step-cost benchmark: {mi['slug']}", "",
             f"* Machine: {mi['cpu_model']}, {mi['cpu_count']} CPU cores, torch {mi['torch']} with "
             f"{mi['torch_threads']} intra-op thread(s)"
             + (f", GPU {mi['gpu']} (CUDA {mi['cuda']})" if "gpu" in mi else "")
             + f", scikit-learn {mi['sklearn']}, Python {mi['python']}; {mi['time']}.",
             f"* Mode: {'quick' if cfg['quick'] else 'full'}{' smoke' if cfg['smoke'] else ''}; median of the timed "
             f"steps after warm-up (per model below); {'bf16 autocast' if amp else 'fp32'}.",
             "* Batch (per model, column B): B ID + B random aux for energy and GReg; GReg+: C = 6B candidates, "
             f"k = min(64, B), two-way -> 2B aux. K = {K}. Margins {w.m_in:g} / {w.m_out:g}, λ_S = "
             f"{w.lambda_energy:g}, λ_∇S = {w.lambda_grad:g} ({w.reduction} reduction).",
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
