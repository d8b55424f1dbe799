"""The front of every stage script: command-line arguments, logging, ``params.yaml`` validated before any compute,
the repository's paths, and the end of a stage on a problem the user can fix (one sentence, exit status 2). Light on
purpose: a stage that needs no model (download, report) imports this and not :mod:`greg_ood.run.pipeline`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Callable, Optional

from . import config as C
from .. import registry
from . import runguard
from .errors import UserError
from .paths import Paths


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)


def stage_cli(description: Optional[str], *, arch: bool = False, experiment: bool = False,
              pretrained: bool = False, argv: Optional[list[str]] = None) -> tuple[argparse.Namespace, C.Config]:
    """The common front of every stage script: parse ``--suite`` (plus ``--arch``; plus ``--method``, ``--seed`` and
    ``--lambda-grad`` for one experiment; with ``pretrained``, ``--pretrained`` may replace ``--method`` and
    ``--seed``), set up logging and validate ``params.yaml`` (exit 2 naming the bad key)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--suite", required=True)
    ap.add_argument("-v", "--verbose", action="store_true", help="show the traceback with an error")
    if experiment:
        who = ap.add_mutually_exclusive_group(required=True) if pretrained else ap
        who.add_argument("--method", required=not pretrained, choices=registry.trained())
        if pretrained:
            who.add_argument("--pretrained", action="store_true", help="the pretrained model of --arch, not fine-tuned")
    if arch or experiment:
        ap.add_argument("--arch", required=True)
    if experiment:
        ap.add_argument("--seed", required=not pretrained, type=int, help="required with --method")
        ap.add_argument("--lambda-grad", type=float, default=None,
                        help="a point of the suite's lambda_grad ablation (overrides loss.lambda_grad)")
    args = ap.parse_args(argv)
    if experiment and args.method and args.seed is None:
        ap.error("--seed is required with --method")
    setup_logging()
    cfg = load_config()
    try:
        cfg.suite(args.suite)
    except C.ConfigError as e:
        print(f"error: --suite: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return args, cfg


def load_config(path: str = "params.yaml") -> C.Config:
    """Validate params.yaml; on error print the message (naming the key) and exit 2 before any compute."""
    try:
        return C.load(path)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def paths(cfg: C.Config) -> Paths:
    return Paths(".", cfg.params.project.data_dir)


def run_stage(main: Callable[[], None], argv: Optional[list[str]] = None) -> None:
    """Run a stage's ``main``. One rule: a :class:`~greg_ood.run.errors.UserError` (a problem the user can fix) ends it
    with its message on stderr and exit status 2, the traceback only with ``-v``/``--verbose`` or
    ``GREG_OOD_VERBOSE=1``; any other exception is a bug and keeps its traceback. SIGTERM/SIGINT end it with
    ``128 + signum`` after its run was marked KILLED."""
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv or os.environ.get("GREG_OOD_VERBOSE", "") not in ("", "0")
    runguard.install_signal_handlers()
    runguard.die_with_parent()
    try:
        main()
    except runguard.StageKilled as e:
        print(f"error: {e}; the last checkpoint is kept, re-run to continue", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except UserError as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
