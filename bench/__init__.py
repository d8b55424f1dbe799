"""Benchmarks and measuring tools: run by hand from the repository root, never imported by the package or a stage.

    python -m bench.step_cost      step cost: our GReg / GReg+ step against an official-style one (``make bench``)
    python -m bench.gpu_check      CUDA benchmark, bf16 check, epoch slice, projection (``make gpu-check``)
    python -m bench.pipeline       where a DVC stage's wall and CPU time go (``make bench-pipeline``)
    python -m bench.suite_phases   a whole suite's CPU time per stage kind, from the phase timer's records
    python -m bench.side_by_side   two fine-tunes side by side against one at a time

``bench/hook/`` holds the phase timer (a ``sitecustomize.py`` put on PYTHONPATH of the measured stage processes).
Reports go to ``reports/bench/``. The modules import :mod:`greg_ood` like any user would; nothing in
``src/greg_ood`` imports them.
"""
