"""evaluate_<S>@<method>-<arch>-<seed> (and evaluate_<S>_ablation@<lambda>-<seed>; evaluate_<S>_pretrained@<arch>:
the pretrained model without fine-tuning, the tables' baseline row): every configured score on the ID test set and
each OOD set."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from greg_ood.run import openood_eval, pipeline, preflight, tracking
from greg_ood import registry
from greg_ood.run.evaluation import evaluate
from greg_ood.run.io import write_json_atomic, write_npz_atomic
from greg_ood.run.runinfo import PRETRAINED, RunInfo, eval_metrics, pretrained_experiment, summary_metrics


@dataclass(frozen=True)
class Subject:
    """What one evaluation scores: ``name`` (the experiment name of its files), ``info`` (the run's identity),
    ``weights`` and ``weights_stage`` (the model file and the DVC stage that writes it), ``layout`` (the registry
    method whose outputs and detection score the model has) and the loss weight ``lambda_energy`` it trained with."""

    name: str
    info: RunInfo
    weights: Path
    weights_stage: str
    layout: str
    lambda_energy: Optional[float]


def subject(cfg, args) -> Subject:
    """The fine-tuned experiment of ``--method/--arch/--seed`` (``--lambda-grad``), or with ``--pretrained`` the
    pretrained model of ``--arch`` (CE layout, identity seed = the pretraining seed, no loss weights)."""
    P = pipeline.paths(cfg)
    if args.pretrained:
        info = RunInfo("evaluate", suite=args.suite, method=PRETRAINED, arch=args.arch,
                       seed=cfg.suite(args.suite).pretrain.seed, group="main")
        return Subject(pretrained_experiment(args.suite, args.arch), info, P.pretrained(args.suite, args.arch),
                       RunInfo("pretrain", suite=args.suite, arch=args.arch).dvc_target, "ce", None)
    exp = cfg.experiment(args.suite, args.method, args.arch, args.seed, ablation_lambda=args.lambda_grad)
    return Subject(exp.name, RunInfo.of_experiment("evaluate", exp), P.model(args.suite, exp.name),
                   RunInfo.of_experiment("train", exp).dvc_target, args.method, exp.train.loss.lambda_energy)


def main() -> None:
    args, cfg = pipeline.stage_cli(__doc__, experiment=True, pretrained=True)
    sub = subject(cfg, args)
    info, name = sub.info, sub.name
    s = cfg.suite(args.suite)
    ev = s.eval
    device = pipeline.init_runtime(cfg, info.seed)
    P = pipeline.paths(cfg)
    preflight.check(preflight.Needs(
        outputs=[P.metrics(args.suite, name), P.results(args.suite, name), P.scores(args.suite, name),
                 P.roc(args.suite, name), P.roc_all(args.suite, name)],
        inputs=[(sub.weights, f"dvc repro {sub.weights_stage}")], data_dir=P.data))
    sd = pipeline.suite_data(cfg, args.suite, aux=False, ood=True)
    model = pipeline.load_model(sub.weights, pipeline.build_model(cfg, args.suite, args.arch, sub.layout), device,
                                stage=sub.weights_stage)
    # the method's own detection score (DOS: its absent-class output), else the suite's primary score
    primary = registry.get(sub.layout).detection_score or ev.primary
    with tracking.stage_run(info,
                            params={"experiment": name, "eval": ev.model_dump(), "primary": primary},
                            experiment_prefix=cfg.params.mlflow.experiment_prefix) as run:
        results, arrays, roc = evaluate(model, id_test=sd.id_test, ood=sd.ood, eval_cfg=ev, mean=sd.mean,
                                        std=sd.std, device=device, primary=primary, fit_split=sd.id_train)
        head = s.data.headline_set or next(iter(sd.ood))
        full = {"experiment": name, "suite": args.suite, "method": info.method, "arch": args.arch,
                "seed": info.seed, "group": info.group, "lambda_grad": info.lambda_grad,
                "lambda_energy": sub.lambda_energy,
                "convention": {"primary_score": primary, "positive": ev.positive, "fpr_rule": ev.fpr_rule,
                               "tpr": ev.tpr},
                **results, "ood_sets": list(sd.ood), "headline_set": head}
        full.update(openood_eval.run_protocols(cfg, args.suite, model, sd, device=device, primary=primary))
        summary = {"id_accuracy": results["id_accuracy"], "fpr95": results["fpr95"], "auroc": results["auroc"],
                   f"{head}.fpr95": results["scores"][primary]["per_set"][head]["fpr95"],
                   f"{head}.auroc": results["scores"][primary]["per_set"][head]["auroc"]}
        write_json_atomic(P.results(args.suite, name), full)
        write_json_atomic(P.metrics(args.suite, name), summary)
        write_npz_atomic(P.scores(args.suite, name),
                         {f"{sc}/{st}": a for sc, d in arrays.items() for st, a in d.items()})
        write_json_atomic(P.roc(args.suite, name),
                          [{"fpr": p["fpr"], "tpr": p["tpr"], "set": head} for p in roc[head]])
        write_json_atomic(P.roc_all(args.suite, name), roc)
        run.log_metrics({**summary_metrics(results, head, primary), **eval_metrics(results, head, primary)})
        run.log_metrics(openood_eval.mlflow_metrics(full))
        run.log_file(P.results(args.suite, name), "results.json")
        print(f"{info.dvc_stage}: ID acc {_pct(summary['id_accuracy'])} | {primary} on {head}: FPR95 "
              f"{_pct(summary[head + '.fpr95'])}, AUROC {_pct(summary[head + '.auroc'])} | mean over "
              f"{len(sd.ood)} OOD sets: FPR95 {_pct(summary['fpr95'])}, AUROC {_pct(summary['auroc'])}")


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


if __name__ == "__main__":
    pipeline.run_stage(main)
