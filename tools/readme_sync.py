"""Paste generated report files into the README between markers, so the README quotes results, never retypes them.

    <!-- generated: reports/mini/claims_readme.md -->
    ... (replaced by the file's content) ...
    <!-- /generated -->

`python tools/readme_sync.py` rewrites README.md in place; `--check` exits 1 when a block differs from its file
(`tests/test_readme.py` runs the check).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- generated: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def sync(text: str, root: Path = ROOT) -> str:
    """``text`` with every generated block replaced by the current content of the file it names."""
    def fill(m: re.Match) -> str:
        src = root / m.group("path")
        if not src.is_file():
            raise FileNotFoundError(f"README block names {m.group('path')}, which does not exist; run the report stage")
        return m.group(1) + src.read_text().rstrip("\n") + "\n" + m.group(4)
    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when the README is out of date")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    args = ap.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    new = sync(old, path.parent)
    if args.check:
        if new != old:
            print(f"{path}: generated blocks are out of date; run `python tools/readme_sync.py`", file=sys.stderr)
            return 1
        return 0
    if new != old:
        path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
