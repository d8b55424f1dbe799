"""certify_<S>: the distribution of ||grad_x E(x)|| and the first-order certified radius
min(eps, |gamma - E(x)| / ||grad_x E(x)||) per test set, ID vs OOD, for models trained with and without GReg
(the paper's Lipschitz argument; gamma = the energy threshold keeping 95 % of ID test data)."""
from __future__ import annotations

import numpy as np
import torch

from greg_ood import certify as CT
from greg_ood.run import pipeline, preflight, tracking
from greg_ood.data import iter_eval
from greg_ood.run.evaluation import forward_all
from greg_ood.run.io import write_json_atomic, write_npz_atomic
from greg_ood.report.fig_certify import plot_certify
from greg_ood.run.runinfo import RunInfo
from greg_ood.scores import energy


def main() -> None:
    args, cfg = pipeline.stage_cli(__doc__)
    s = cfg.suite(args.suite)
    cc = s.certify
    arch = s.archs[0]
    seeds = cc.seeds if cc.seeds is not None else s.seeds  # every seed by default: the claims pair them
    device = pipeline.init_runtime(cfg, seeds[0])
    P = pipeline.paths(cfg)
    out = P.certify(args.suite)
    trained = [cfg.experiment(args.suite, m, arch, sd_) for m in cc.methods for sd_ in seeds]
    preflight.check(preflight.Needs(
        outputs=[out / "certify.json"], data_dir=P.data,
        inputs=[(P.model(args.suite, e.name), f"dvc repro {RunInfo.of_experiment('train', e).dvc_target}")
                for e in trained]))
    sd = pipeline.suite_data(cfg, args.suite, aux=False, ood=True)
    rng = np.random.RandomState(0)
    sets = {"id": sd.id_test.images, **{k: v.images for k, v in sd.ood.items()}}
    sets = {k: v[np.sort(rng.choice(len(v), min(cc.count, len(v)), replace=False))] for k, v in sets.items()}
    summary, arrays = {}, {}
    with tracking.stage_run(RunInfo("certify", suite=args.suite, arch=arch),
                            params={"certify": cc.model_dump()},
                            experiment_prefix=cfg.params.mlflow.experiment_prefix) as run:
        for method, seed in ((m, sd_) for m in cc.methods for sd_ in seeds):
            exp = cfg.experiment(args.suite, method, arch, seed)
            model = pipeline.load_model(P.model(args.suite, exp.name),
                                        pipeline.build_model(cfg, args.suite, arch, method), device,
                                        stage=RunInfo.of_experiment("train", exp).dvc_target)
            e_id, _ = forward_all(model, sd.id_test.images, mean=sd.mean, std=sd.std, device=device)
            gamma = float(CT.threshold_at_tpr(energy(e_id), tpr=s.eval.tpr))
            norms, radii = {}, {}
            for name, imgs in sets.items():
                logits, _ = forward_all(model, imgs, mean=sd.mean, std=sd.std, device=device)
                en = energy(logits)
                g = torch.cat([CT.energy_grad_norms(model, x).detach().cpu() for x in
                               iter_eval(imgs, batch_size=cc.batch_size, device=device, mean=sd.mean, std=sd.std)])
                r = CT.certified_radius(en, g, gamma, cc.eps)
                norms[name], radii[name] = g.cpu().numpy(), r.cpu().numpy()
                arrays[f"grad_norm/{name}"] = norms[name]
                arrays[f"radius/{name}"] = radii[name]
            summary[exp.name] = {"experiment": exp.name, "method": method, "seed": seed, "gamma": gamma, "eps": cc.eps,
                               "per_set": {k: {"grad_norm_median": float(np.median(norms[k])),
                                               "grad_norm_mean": float(np.mean(norms[k])),
                                               "radius_median": float(np.median(radii[k])),
                                               "radius_mean": float(np.mean(radii[k]))} for k in norms}}
            write_npz_atomic(P.certify_npz(args.suite, exp.name), arrays)
            arrays = {}
            plot_certify(norms, radii, out / f"{exp.name}.png")
            run.log_metrics({f"certify/{method}/s{seed}/{k}/{m}": v[m] for k, v in summary[exp.name]["per_set"].items()
                             for m in ("grad_norm_median", "radius_median")})
        write_json_atomic(out / "certify.json", summary)
        run.log_artifact(out, "certify")


if __name__ == "__main__":
    pipeline.run_stage(main)
