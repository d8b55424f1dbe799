"""One-off: rewrite training CSVs of the old format (a second row for each epoch's last step, holding only
``id_test_acc``) in the one-row-per-step format the train and pretrain stages now write
(:func:`greg_ood.run.runlog.convert_old_curve`). Files already in the new format are left untouched.

    python tools/convert_train_csv.py                      # every metrics/*/train/*.train.csv and pretrain curve
    python tools/convert_train_csv.py FILE [FILE ...]      # just these
    python tools/convert_train_csv.py --check              # list the files that would change, write nothing

After converting, ``dvc commit`` the stages whose CSV changed (the weights are untouched), or re-run one of them to
see that it writes the same bytes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from greg_ood.run.io import write_bytes_atomic
from greg_ood.run.runlog import convert_old_curve


def default_files(root: Path) -> list[Path]:
    """The committed training curves of every suite under ``root``."""
    return sorted(root.glob("metrics/*/train/*.csv")) + sorted(root.glob("metrics/*/pretrain/*.csv"))


def convert(files: list[Path], write: bool = True) -> list[Path]:
    """Convert ``files`` in place (atomically); returns those that changed."""
    changed = []
    for f in files:
        old = f.read_bytes().decode("utf-8")
        new = convert_old_curve(old)
        if new != old:
            changed.append(f)
            if write:
                write_bytes_atomic(f, new)
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true", help="only list the files that would change")
    args = ap.parse_args(argv)
    files = args.files or default_files(Path("."))
    changed = convert(files, write=not args.check)
    for f in changed:
        print(f"{'would convert' if args.check else 'converted'} {f}")
    print(f"{len(changed)} of {len(files)} files {'need converting' if args.check else 'converted'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
