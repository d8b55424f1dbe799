"""The GPU check's Markdown report (``<out>/gpu-check.md``) from its result dict."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def _s(v: Optional[float]) -> str:
    if v is None:
        return "—"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def _bench_lines(bench: dict) -> list[str]:
    lines = ["| model | B / C / k | energy | GReg | GReg+ | official GReg | official GReg+ | GReg/official | "
             "GReg+/official | sampler vs scikit-learn | eval img/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in bench["models"].items():
        s, c, q = r["seconds_per_step"], r["config"], r["ratios"]

        def ratio(k):
            return "—" if q.get(k) is None else f"{q[k]:.2f}"

        lines.append(f"| {name} | {c['B']} / {c['C']} / {c['k']} | {_s(s['energy'])} | {_s(s['greg'])} | "
                     f"{_s(s['greg_plus'])} | {_s(s['official_greg'])} | {_s(s['official_greg_plus'])} | "
                     f"{ratio('greg_over_official')} | {ratio('greg_plus_over_official')} | "
                     f"{ratio('sampler_speedup_select')}x | {r['eval_images_per_s']:.0f} |")
    return lines


def _bf16_lines(result: dict) -> list[str]:
    tol = result["bf16_tolerance"]
    lines = [f"Tolerances: each loss component within {tol['loss_rtol']:.0%} (relative) of fp32; flattened parameter "
             f"gradient relative L2 error <= {tol['grad_rel_l2']} and cosine >= {tol['grad_cos']}. Same weights "
             "and batch, one GReg step, no optimiser step.", "",
             "| model | CE rel. diff | energy rel. diff | penalty rel. diff | total rel. diff | grad rel. L2 | "
             "grad cosine | pass |", "|---|---|---|---|---|---|---|---|"]
    for arch, r in result["bf16"].items():
        lo = r["loss"]
        lines.append(f"| {arch} | {lo['ce']['rel_diff']:.2e} | {lo['energy']['rel_diff']:.2e} | "
                     f"{lo['grad']['rel_diff']:.2e} | {lo['total']['rel_diff']:.2e} | {r['grad']['rel_l2']:.3f} | "
                     f"{r['grad']['cosine']:.4f} | {'yes' if r['pass'] else 'NO'} |")
    return lines + ["", f"Verdict: {result['bf16_verdict']}. Training runs in fp32 (there is no mixed-precision "
                        "setting in params.yaml); this check says whether adding one would be safe."]


def _slice_lines(sl: dict) -> list[str]:
    busy = sl["busy"]
    frac = "n/a (" + busy.get("reason", "") + ")" if busy["fraction"] is None else \
        f"{busy['fraction']:.0%} ({_s(busy['kernel_s_per_step'])} of kernels per {_s(busy['step_s'])} step)"
    return [f"{sl['arch']}, {sl['n_id']:,} ID + {sl['n_aux']:,} auxiliary synthetic 32x32x3 images on the device; "
            f"B = {sl['batch']}, C = {sl['candidates']} candidates, k = {sl['n_clusters']}, "
            f"{sl['steps_per_epoch']} steps per epoch.", "",
            "| step | timed steps | s/step | projected epoch |", "|---|---|---|---|",
            f"| ours (GReg+) | {sl['ours_steps_timed']} | {_s(sl['ours_s_per_step'])} | {_h(sl['ours_epoch_s'])} |",
            f"| official-style | {sl['official_steps_timed']} | {_s(sl['official_s_per_step'])} | "
            f"{_h(sl['official_epoch_s'])} |", "",
            f"Speed-up: {sl['speedup']:.2f}x. GPU-busy fraction of our step: {frac}."]


def _projection_lines(p: dict) -> list[str]:
    lines = [f"Single device, stages one after another; data: {p['counts']['train']:,} ID training, "
             f"{p['counts']['test']:,} ID test, {p['counts']['ood']:,} OOD, {p['counts']['aux']:,} auxiliary images.",
             "", "| stage kind | stages | steps / images | projected | basis |", "|---|---|---|---|---|"]
    for kind, r in p["rows"].items():
        miss = f" (no timing for {r['missing']})" if r["missing"] else ""
        lines.append(f"| {kind} | {r['stages']} | {r['steps']:,.0f} | {_h(r['seconds'])}{miss} | {r['note']} |")
    lines.append(f"| **total** | {sum(r['stages'] for r in p['rows'].values())} | | **{_h(p['total_s'])}**"
                 f"{'' if p['complete'] else ' (incomplete)'} | |")
    return lines


def write_markdown(result: dict, path: Path) -> None:
    mi = result["machine"]
    dev = f"GPU {mi['gpu']} (CUDA {mi['cuda']})" if "gpu" in mi else f"CPU only ({mi['cpu_model']})"
    lines = [f"# GPU check{' (smoke, tiny sizes: the numbers mean nothing)' if result['smoke'] else ''}", "",
             f"* Device: {dev}; torch {mi['torch']}; {mi['time']}; took {result['wall_s']:.0f} s.",
             f"* Suite: {result['suite']}; fine-tuning batch B = {result['batch']}.", "",
             "## Step benchmark (`make bench`, fp32)", "", *_bench_lines(result["bench"]), "",
             "## bf16 autocast against fp32", "", *_bf16_lines(result), "",
             "## A slice of a CIFAR-10 WRN-40-2 GReg+ epoch", "", *_slice_lines(result["slice"]), "",
             f"## Projected wall time of `dvc repro report_{result['suite']}`", "",
             *_projection_lines(result["projection"]), ""]
    path.write_text("\n".join(lines))
