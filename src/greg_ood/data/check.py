"""Every file a suite needs, in one table (``python -m greg_ood.data check --suite S``, :mod:`greg_ood.data.__main__`).

For each dataset the suite reads (ID, auxiliary, every OOD set) and each file it is built from: the status (prepared,
present, system copy, wrong size, missing), size, published checksum, where it comes from and where it must be placed
by hand (``<data_dir>/raw/<group>/<file>``; the copy is verified before use). A user preparing data on a machine
without internet learns everything at once instead of one failing download at a time.
"""
from __future__ import annotations

from pathlib import Path


from .download import find_system_copy
from .sources import DATASETS, Source

COLUMNS = ("status", "dataset", "file", "size", "checksum", "source", "place at")


def suite_datasets(cfg, suite: str) -> list[str]:
    """The datasets ``suite`` reads, in order (ID, auxiliary, OOD sets, the extra protocols' sets), each once."""
    from .openood import protocol_datasets

    d = cfg.suite(suite).data
    names = [d.id.dataset, d.aux.dataset, *(o.dataset for o in d.ood), *protocol_datasets(cfg.suite(suite))]
    return list(dict.fromkeys(names))


def _status(source: Source, dest: Path, prepared: bool) -> str:
    if dest.is_file():
        have = dest.stat().st_size
        if source.size and have != source.size:
            return f"WRONG SIZE ({have:,} B)"
        return "present"
    if prepared:
        return "prepared"
    if find_system_copy(source) is not None:
        return "system copy"
    return "MISSING"


def _size(source: Source) -> str:
    return f"{source.size:,} B" if source.size else (source.approx_size or "?")


def _origin(source: Source) -> str:
    if not source.urls:
        return "; ".join(source.alternatives) or "local copy only"
    more = f" (+{len(source.urls) - 1} mirror(s))" if len(source.urls) > 1 else ""
    return source.urls[0] + more


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def file_rows(datasets: list[str], data_dir: Path) -> list[dict[str, str]]:
    """One row per (dataset, file) — a file that several datasets share (one raw folder) only at its first
    dataset; a dataset built without downloads gets one row of its own."""
    rows, seen = [], set()
    for name in datasets:
        spec = DATASETS[name]
        prepared = (data_dir / "prepared" / name / "manifest.json").is_file()
        if not spec.sources:
            rows.append({"status": "prepared" if prepared else "built locally", "dataset": name, "file": "-",
                         "size": "-", "checksum": "-", "source": _short(spec.description or "generated or bundled"),
                         "place at": "-"})
        for s in spec.sources:
            dest = data_dir / "raw" / spec.raw_name / s.filename
            if dest in seen:
                continue
            seen.add(dest)
            rows.append({"status": _status(s, dest, prepared), "dataset": name, "file": s.filename,
                         "size": _size(s), "checksum": s.describe_checksum(), "source": _origin(s),
                         "place at": str(dest)})
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """A Markdown table (aligned, so it reads in a terminal too)."""
    width = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in COLUMNS}
    line = lambda vals: "| " + " | ".join(v.ljust(width[c]) for c, v in zip(COLUMNS, vals)) + " |"  # noqa: E731
    out = [line(COLUMNS), "|" + "|".join("-" * (width[c] + 2) for c in COLUMNS) + "|"]
    out += [line([r[c] for c in COLUMNS]) for r in rows]
    return "\n".join(out)


def report(cfg, suite: str, data_dir: Path) -> tuple[str, int]:
    """The check's text and how many files are missing (or of the wrong size)."""
    names = suite_datasets(cfg, suite)
    rows = file_rows(names, data_dir)
    bad = sum(r["status"].startswith(("MISSING", "WRONG")) for r in rows)
    head = (f"suite {suite}: {len(names)} datasets, {sum(r['file'] != '-' for r in rows)} files to download; "
            f"{bad} missing or wrong (data dir: {data_dir}; paths relative to the repository root)")
    text = [head, format_table(rows)]
    if bad:
        text.append(f"Place each MISSING file at its path (any of its sources; it is verified against the checksum "
                    f"before use), then run `dvc repro report_{suite}`.")
    return "\n".join(text), bad
