"""report_<S>: paper-style tables (Markdown, LaTeX, CSV), the claims table with computed verdicts, the paper's
numbers side by side, the lambda_grad ablation and gradient-term ablation tables, paired per-seed differences, the
noise finding and figures under reports/<suite>/, and one summary metrics file per method under
metrics/<suite>/summary/."""
from __future__ import annotations

from greg_ood.run import preflight, stagecli, tracking
from greg_ood.report.noise import noise_inputs
from greg_ood.report.suite import build_suite_report
from greg_ood.run.runinfo import RunInfo, pretrained_experiment


def main() -> None:
    args, cfg = stagecli.stage_cli(__doc__)
    P = stagecli.paths(cfg)
    exps = cfg.experiments(args.suite)
    baselines = [pretrained_experiment(args.suite, a) for a in cfg.suite(args.suite).archs]
    metrics_files = [P.results(args.suite, n) for n in baselines + [e.name for e in exps]]
    missing = [str(p) for p in metrics_files if not p.exists()]
    if missing:
        raise SystemExit(f"error: results missing for {len(missing)} experiments, e.g. {missing[:3]}; run "
                         f"`dvc repro report_{args.suite}` (it runs the evaluate stages first)")
    preflight.check(preflight.Needs(outputs=[P.report(args.suite) / "main.csv"]))
    with tracking.stage_run(RunInfo("report", suite=args.suite),
                            params={"experiments": [e.name for e in exps]},
                            experiment_prefix=cfg.params.mlflow.experiment_prefix) as run:
        written = build_suite_report(
            suite=args.suite, metrics_files=metrics_files, paper_csv=P.root / "reports" / "paper" / "paper_numbers.csv",
            out_dir=P.report(args.suite), scores_dir=P.scores(args.suite, "x").parent,
            plots_dir=P.roc_all(args.suite, "x").parent.parent,
            train_csv_files=[P.train_csv(args.suite, e.name) for e in exps],
            certify_files=sorted(P.certify(args.suite).glob("*.npz")),
            grad_pairs=cfg.suite(args.suite).grad_ablation.pairs,
            summary_dir=P.root / "metrics" / args.suite / "summary", noise=noise_inputs(cfg.suite(args.suite), P),
            margins={e.name: (e.train.loss.m_in, e.train.loss.m_out) for e in exps},
            kinds={o.name: o.kind for o in cfg.suite(args.suite).data.ood})
        run.log_artifact(P.report(args.suite), "report")
        run.log_artifact(P.root / "metrics" / args.suite / "summary", "summary")
        for k, v in written.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    stagecli.run_stage(main)
