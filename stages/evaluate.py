"""evaluate_<S>@<method>-<arch>-<seed> (and evaluate_<S>_ablation@<lambda>-<seed>): every configured score on the ID
test set and each OOD set."""
from __future__ import annotations

from greg_ood import openood_eval, pipeline, registry, tracking
from greg_ood.evaluation import evaluate
from greg_ood.io import write_json_atomic, write_npz_atomic
from greg_ood.runinfo import RunInfo, eval_metrics


def main() -> None:
    args, cfg = pipeline.stage_cli(__doc__, experiment=True)
    exp = cfg.experiment(args.suite, args.method, args.arch, args.seed, ablation_lambda=args.lambda_grad)
    s = cfg.suite(args.suite)
    ev = s.eval
    device = pipeline.init_runtime(cfg, args.seed)
    P = pipeline.paths(cfg)
    sd = pipeline.suite_data(cfg, args.suite, aux=False, ood=True)
    model = pipeline.load_model(P.model(args.suite, exp.name),
                                pipeline.build_model(cfg, args.suite, args.arch, args.method), device,
                                stage=RunInfo.of_experiment("train", exp).dvc_stage)
    # the method's own detection score (DOS: its absent-class output), else the suite's primary score
    primary = registry.get(args.method).detection_score or ev.primary
    info = RunInfo.of_experiment("evaluate", exp)
    with tracking.stage_run(info,
                            params={"experiment": exp.name, "eval": ev.model_dump(), "primary": primary},
                            experiment_prefix=cfg.params.mlflow.experiment_prefix) as run:
        results, arrays, roc = evaluate(model, id_test=sd.id_test, ood=sd.ood, eval_cfg=ev, mean=sd.mean,
                                        std=sd.std, device=device, primary=primary, fit_split=sd.id_train)
        head = s.data.headline_set or next(iter(sd.ood))
        full = {"experiment": exp.name, "suite": args.suite, "method": args.method, "arch": args.arch,
                "seed": args.seed, "group": exp.group, "lambda_grad": exp.train.loss.lambda_grad,
                "lambda_energy": exp.train.loss.lambda_energy,
                "convention": {"primary_score": primary, "positive": ev.positive, "fpr_rule": ev.fpr_rule,
                               "tpr": ev.tpr},
                **results, "ood_sets": list(sd.ood), "headline_set": head}
        full.update(openood_eval.run_protocols(cfg, args.suite, model, sd, device=device, primary=primary))
        summary = {"id_accuracy": results["id_accuracy"], "fpr95": results["fpr95"], "auroc": results["auroc"],
                   f"{head}.fpr95": results["scores"][primary]["per_set"][head]["fpr95"],
                   f"{head}.auroc": results["scores"][primary]["per_set"][head]["auroc"]}
        write_json_atomic(P.results(args.suite, exp.name), full)
        write_json_atomic(P.metrics(args.suite, exp.name), summary)
        write_npz_atomic(P.scores(args.suite, exp.name),
                         {f"{sc}/{st}": a for sc, d in arrays.items() for st, a in d.items()})
        write_json_atomic(P.roc(args.suite, exp.name),
                          [{"fpr": p["fpr"], "tpr": p["tpr"], "set": head} for p in roc[head]])
        write_json_atomic(P.roc_all(args.suite, exp.name), roc)
        run.log_metrics(eval_metrics(results, head, primary))
        run.log_metrics(openood_eval.mlflow_metrics(full))
        run.log_file(P.results(args.suite, exp.name), "results.json")
        print(f"{info.dvc_stage}: ID acc {_pct(summary['id_accuracy'])} | {primary} on {head}: FPR95 "
              f"{_pct(summary[head + '.fpr95'])}, AUROC {_pct(summary[head + '.auroc'])} | mean over "
              f"{len(sd.ood)} OOD sets: FPR95 {_pct(summary['fpr95'])}, AUROC {_pct(summary['auroc'])}")


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


if __name__ == "__main__":
    pipeline.run_stage(main)
