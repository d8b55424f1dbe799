"""Command-line tools built on the library and run by hand, never by a pipeline stage:

    python -m greg_ood.cli.exps     tables across queued DVC experiments, read back from MLflow
    python -m greg_ood.cli.repro    a DVC target's stages two at a time (``make mini``)
"""
