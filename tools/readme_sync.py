"""Paste generated report files into the README between markers, so the README quotes results, never retypes them.

    <!-- generated: reports/mini/claims_readme.md -->
    ... (replaced by the file's content) ...
    <!-- /generated -->

`python tools/readme_sync.py` rewrites README.md and the pages in ``SYNCED`` (docs/results.md) in place; `--check`
exits 1 when a block differs from its file (`tests/test_readme.py` runs the check). A marker's path is relative to the
repository root, whichever page holds it. A block whose file does not exist is an error, unless its marker ends in
` pending` (`<!-- generated: reports/x.md pending -->`, for a file the next run of its stage writes): its body then
says that the file is not generated yet, so the README never shows numbers that no file holds.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYNCED = ("README.md", "docs/results.md")
BLOCK = re.compile(r"(<!-- generated: (?P<path>[^ ]+)(?P<pending> pending)? -->\n)(?P<body>.*?)(<!-- /generated -->)",
                   re.S)


def pending_text(path: str) -> str:
    """The body of a ``pending`` block whose file does not exist yet."""
    return (f"*Not generated yet: the report stage writes `{path}` on its next run; then run "
            f"`python tools/readme_sync.py`.*")


def sync(text: str, root: Path = ROOT) -> str:
    """``text`` with every generated block replaced by the current content of the file it names."""
    def fill(m: re.Match) -> str:
        src = root / m.group("path")
        if src.is_file():
            return m.group(1) + src.read_text().rstrip("\n") + "\n" + m.group(5)
        if m.group("pending"):
            return m.group(1) + pending_text(m.group("path")) + "\n" + m.group(5)
        raise FileNotFoundError(f"README block names {m.group('path')}, which does not exist; run the report stage")
    return BLOCK.sub(fill, text)


def sync_file(path: Path, root: Path, check: bool) -> bool:
    """Bring ``path``'s generated blocks up to date (or only compare, with ``check``); True when it was current."""
    old = path.read_text()
    new = sync(old, root)
    if new == old:
        return True
    if check:
        print(f"{path}: generated blocks are out of date; run `python tools/readme_sync.py`", file=sys.stderr)
    else:
        path.write_text(new)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when a page is out of date")
    ap.add_argument("--readme", help="sync this one file (marker paths relative to its folder) instead of the pages")
    args = ap.parse_args(argv)
    if args.readme:
        pages = [(Path(args.readme), Path(args.readme).parent)]
    else:
        pages = [(ROOT / p, ROOT) for p in SYNCED]
    current = [sync_file(path, root, args.check) for path, root in pages]
    return 0 if all(current) or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
