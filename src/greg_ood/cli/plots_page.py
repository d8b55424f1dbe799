"""``python -m greg_ood.cli.plots_page`` (``make plots``): ``dvc plots show`` as a page that reads offline.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN, so it is blank without internet. This command writes
an HTML template with those libraries inlined (the bundle that the ``vl-convert-python`` package ships) and leaves
out DVC's ``{scripts}`` placeholder (the CDN tags), then runs ``dvc plots show --html-template`` with it. The page
has no external reference and opens from disk on a machine without network access. Only the plots whose data exist
are shown (no empty slots for suites that never ran); ``--suite S`` keeps one suite's.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

#: the Vega-Lite release of the bundle: the newest v5 (DVC writes its plot specs for Vega-Lite v5)
VEGA_LITE = "5.21"

#: an external script or stylesheet a browser would fetch
EXTERNAL = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)

PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>DVC plots (offline)</title>
  <script type="text/javascript">
{bundle}
  </script>
  <style>
    body {{ font-family: sans-serif; }}
    table {{ border-spacing: 15px; }}
  </style>
</head>
<body>
  {{plot_divs}}
</body>
</html>
"""


def offline_template() -> str:
    """The page template with Vega, Vega-Lite and Vega-Embed inlined (globals ``vega``, ``vegaLite``,
    ``vegaEmbed``, as DVC's plot snippets expect)."""
    try:
        import vl_convert
    except ImportError:
        raise SystemExit("error: the offline plots page needs the package vl-convert-python "
                         "(`pip install -r requirements.txt`)") from None
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE).replace("</script", "<\\/script")
    return PAGE.format(bundle=bundle)


def external_references(html: str) -> list[str]:
    """External script/stylesheet tags in ``html`` (none in an offline page)."""
    return EXTERNAL.findall(html)


def existing_plots(dvc_yaml: Path, suite: Optional[str] = None) -> list[str]:
    """The top-level plots of ``dvc_yaml`` with at least one data file present (those of ``suite`` only: their
    names start with the suite, as dvcgen writes them)."""
    import yaml

    out = []
    for entry in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("plots", []):
        name, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        files = list((spec or {}).get("y", {})) if isinstance((spec or {}).get("y"), dict) else [name]
        if any((dvc_yaml.parent / f).is_file() for f in files) and (suite is None or name.startswith(f"{suite} ")):
            out.append(name)
    return out


def as_target(name: str) -> str:
    """A ``dvc plots show`` target selecting the plot ``name`` only. DVC reads targets as regular expressions and
    does not match backslash-escaped ones, so every character other than a letter, digit, ``_``, ``-`` or space
    becomes ``.``, and the end is anchored."""
    return re.sub(r"[^\w\- ]", ".", name) + "$"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m greg_ood.cli.plots_page", description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", default="dvc_plots", help="output folder (index.html)")
    ap.add_argument("--suite", help="only this suite's plots")
    ap.add_argument("targets", nargs="*", help="plots to show (default: dvc.yaml's plots whose data exist)")
    args = ap.parse_args(argv)
    targets = args.targets or [as_target(n) for n in existing_plots(Path("dvc.yaml"), args.suite)]
    if not targets:
        print("error: no plot has data yet; run `dvc repro report_<suite>` first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tpl = Path(tmp) / "offline.html"
        tpl.write_text(offline_template(), encoding="utf8")
        r = subprocess.run(["dvc", "plots", "show", "--html-template", str(tpl), "-o", args.out, *targets],
                           capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout + r.stderr, file=sys.stderr)
        return r.returncode
    page = Path(args.out) / "index.html"
    bad = external_references(page.read_text(encoding="utf8"))
    if bad:
        print(f"error: {page} still references {bad[:3]}", file=sys.stderr)
        return 1
    print(f"{page}: offline page (Vega inlined), open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
