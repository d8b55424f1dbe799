"""The README quotes generated results (claims tables, main tables) verbatim: no number or verdict typed by hand."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("readme_sync", ROOT / "tools" / "readme_sync.py")
readme_sync = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_sync)


def test_readme_generated_blocks_match_their_files():
    text = (ROOT / "README.md").read_text()
    blocks = readme_sync.BLOCK.findall(text)
    assert blocks, "the README quotes no generated block"
    assert readme_sync.sync(text) == text, "README is out of date: run `python tools/readme_sync.py`"


def test_sync_replaces_a_stale_block_and_names_a_missing_file(tmp_path):
    (tmp_path / "t.md").write_text("| a | b |\n")
    stale = "x\n<!-- generated: t.md -->\nold\n<!-- /generated -->\ny\n"
    assert readme_sync.sync(stale, tmp_path) == "x\n<!-- generated: t.md -->\n| a | b |\n<!-- /generated -->\ny\n"
    with pytest.raises(FileNotFoundError, match="missing.md"):
        readme_sync.sync("<!-- generated: missing.md -->\n<!-- /generated -->", tmp_path)


def test_pending_block_says_not_generated_until_its_file_exists(tmp_path):
    block = "<!-- generated: n.md pending -->\nold\n<!-- /generated -->"
    want = "<!-- generated: n.md pending -->\n" + readme_sync.pending_text("n.md") + "\n<!-- /generated -->"
    assert readme_sync.sync(block, tmp_path) == want and "Not generated yet" in want
    (tmp_path / "n.md").write_text("* line\n")
    assert readme_sync.sync(want, tmp_path) == "<!-- generated: n.md pending -->\n* line\n<!-- /generated -->"
