"""``python -m greg_ood.data check --suite S``: every file a suite needs and which are present
(:func:`greg_ood.data.check.report`). The command reads params.yaml, so it lives here, outside the data layer that
the run machinery's config imports."""
import argparse
import sys
from pathlib import Path
from typing import Optional

from .check import report


def main(argv: Optional[list[str]] = None) -> int:
    from ..run import config as C

    ap = argparse.ArgumentParser(prog="python -m greg_ood.data", description="every file a suite needs, in one table")
    sub = ap.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="list every file a suite needs and which are present")
    chk.add_argument("--suite", required=True)
    chk.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        cfg = C.load(args.params)
        cfg.suite(args.suite)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text, bad = report(cfg, args.suite, Path(cfg.params.project.data_dir))
    print(text)
    return 1 if bad else 0


sys.exit(main())
