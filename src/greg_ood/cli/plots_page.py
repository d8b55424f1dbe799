"""``python -m greg_ood.cli.plots_page`` (``make plots``, ``make plots-diff REV=HEAD``): DVC's plots as a page that
reads offline, with legends that name the run (method · seed · λ) and only the configuration's own runs.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN, so it is blank without internet; the repository's
``.dvc/config`` points ``dvc plots show/diff`` at ``.dvc/plots/offline.html`` (the same libraries inlined, written by
``--write-template``), so plain ``dvc plots diff HEAD`` also opens offline. This command goes further: it asks DVC for
the filled plot specs (``dvc plots show --json``, or ``dvc plots diff --json REV…`` to compare revisions or
experiments), then

* keeps only the curves of runs the configuration of their revision declares (a committed curve of a method since
  removed from a suite stays on disk but is left out), and
* labels each curve ``<method> · s<seed> · λ=<lambda_grad>`` with λ resolved from that revision's ``params.yaml``
  (DVC's legend would show file names; the plot template's own fallback reads method and seed from the file name),

and writes one page with everything inlined. Only plots with data appear; ``--suite S`` keeps one suite's.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

#: the Vega-Lite release of the bundle: the newest v5 (DVC writes its plot specs for Vega-Lite v5)
VEGA_LITE = "5.21"
#: the vendored HTML template ``.dvc/config`` names for ``dvc plots`` (path relative to ``.dvc/``)
VENDORED = Path(".dvc") / "plots" / "offline.html"
#: the revision name DVC gives the working tree
WORKSPACE = "workspace"

#: an external script or stylesheet a browser would fetch
EXTERNAL = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)
#: what follows a run's name in its plot files
_SUFFIX = re.compile(r"(\.train\.csv|\.json)$")

PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>%TITLE%</title>
  <script type="text/javascript">
%BUNDLE%
  </script>
  <style>
    body { font-family: sans-serif; }
    table { border-spacing: 15px; }
    .plot { display: inline-block; vertical-align: top; margin: 10px; }
  </style>
</head>
<body>
  %BODY%
</body>
</html>
"""


def _fill(title: str, body: str) -> str:
    """:data:`PAGE` with its title, body and the inlined libraries (last, so nothing is substituted inside them)."""
    return PAGE.replace("%TITLE%", title).replace("%BODY%", body).replace("%BUNDLE%", _bundle())


def _bundle() -> str:
    try:
        import vl_convert
    except ImportError:
        raise SystemExit("error: the offline plots page needs the package vl-convert-python "
                         "(`pip install -r requirements.txt`)") from None
    return vl_convert.javascript_bundle(vl_version=VEGA_LITE).replace("</script", "<\\/script")


def offline_template() -> str:
    """DVC's ``--html-template``: Vega, Vega-Lite and Vega-Embed inlined (globals ``vega``, ``vegaLite``,
    ``vegaEmbed``, as DVC's plot snippets expect) and DVC's ``{plot_divs}`` placeholder, no CDN ``{scripts}``."""
    return _fill("DVC plots (offline)", "{plot_divs}")


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


def run_label(method: str, seed: Optional[int], lambda_grad: Optional[float]) -> str:
    """A curve's legend entry: ``greg · s0 · λ=1``."""
    parts = [method] + ([f"s{seed}"] if seed is not None else []) + \
        ([f"λ={lambda_grad:g}"] if lambda_grad is not None else [])
    return " · ".join(parts)


def run_labels(cfg) -> dict[str, str]:
    """``{run name (the plot file's stem): legend label}`` for every run the configuration ``cfg`` declares, in
    every suite: the main grid, the λ ablation points and the pretrained baseline."""
    from ..run.runinfo import PRETRAINED, pretrained_experiment

    out = {}
    for suite in cfg.params.suites:
        for e in cfg.experiments(suite):
            out[e.name] = run_label(e.method, e.seed, e.train.loss.lambda_grad)
        for arch in cfg.suite(suite).archs:
            out[pretrained_experiment(suite, arch)] = run_label(PRETRAINED, None, None)
    return out


def run_of(filename: str) -> str:
    """The run name of a plot file (``metrics/mini/train/mini-greg-small_cnn-s0.train.csv`` ->
    ``mini-greg-small_cnn-s0``)."""
    return _SUFFIX.sub("", filename.replace("\\", "/").rsplit("/", 1)[-1])


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def params_text_at(rev: str) -> Optional[str]:
    """``params.yaml`` as the revision or DVC experiment ``rev`` has it (None if neither git nor DVC's experiment
    refs know it)."""
    r = _git("show", f"{rev}:params.yaml")
    if r.returncode == 0:
        return r.stdout
    refs = _git("for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    ref = next((x for x in refs if x.rsplit("/", 1)[-1] == rev), None)
    return _git("show", f"{ref}:params.yaml").stdout if ref else None


def labels_at(rev: str, root: Path = Path(".")) -> Optional[dict[str, str]]:
    """:func:`run_labels` of the configuration at ``rev`` (the working tree's for ``workspace``); None where that
    ``params.yaml`` cannot be read or is invalid."""
    from ..run import config as C

    try:
        if rev == WORKSPACE:
            return run_labels(C.load(root / "params.yaml"))
        text = params_text_at(rev)
        if text is None:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "params.yaml"
            p.write_text(text)
            return run_labels(C.load(p))
    except Exception:  # noqa: BLE001 - an old or broken revision: its curves keep the template's file-name labels
        return None


def relabel(spec: dict, labels: dict[str, Optional[dict[str, str]]]) -> Optional[dict]:
    """``spec`` (a filled DVC plot) with only the points of runs their revision's configuration declares, each
    labelled (field ``run``); ``labels`` maps a revision to its :func:`run_labels` (None: keep all, unlabelled).
    None when no point is left."""
    values = []
    for v in spec.get("data", {}).get("values", []):
        known = labels.get(v.get("rev", WORKSPACE))
        if known is None:
            values.append(v)
            continue
        name = run_of(str(v.get("filename", "")))
        if name in known:
            values.append({**v, "run": known[name]})
    if not values:
        return None
    return {**spec, "data": {**spec["data"], "values": values}}


def page(plots: dict[str, dict], title: str) -> str:
    """One offline HTML page embedding the Vega-Lite ``plots`` (``{name: spec}``) in order."""
    divs, calls = [], []
    for i, (name, spec) in enumerate(plots.items()):
        divs.append(f'<div class="plot" id="plot{i}" title="{_html(name)}"></div>')
        calls.append(f"vegaEmbed('#plot{i}', {json.dumps(spec)}, {{actions: true}});")
    script = "\n".join(c.replace("</", "<\\/") for c in calls)
    body = f"<h1>{_html(title)}</h1>\n  " + "\n  ".join(divs) + f"\n  <script type=\"text/javascript\">\n{script}\n  </script>"
    return _fill(_html(title), body)


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def dvc_specs(targets: list[str], revs: list[str]) -> dict[str, list[dict]]:
    """``dvc plots show --json`` (no ``revs``) or ``dvc plots diff --json revs``: ``{plot name: [spec, …]}``."""
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"  # this environment's DVC first
    cmd = ([dvc, "plots", "diff", "--json", *revs, "--targets", *targets] if revs
           else [dvc, "plots", "show", "--json", *targets])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: `dvc {' '.join(cmd[1:4])} …` failed: {(r.stderr or r.stdout).strip()[-500:]}")
    data = json.loads(r.stdout).get("data", {})
    return {name: [e["content"] for e in entries if e.get("type") == "vega" and "content" in e]
            for name, entries in data.items()}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m greg_ood.cli.plots_page", description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", default="dvc_plots", help="output folder (index.html)")
    ap.add_argument("--suite", help="only this suite's plots")
    ap.add_argument("--diff", nargs="+", metavar="REV", default=[],
                    help="compare the workspace with these git revisions or DVC experiments (dvc plots diff)")
    ap.add_argument("--write-template", metavar="PATH", help=f"only write DVC's offline HTML template (the "
                    f"repository's copy: {VENDORED.as_posix()}) and exit")
    ap.add_argument("targets", nargs="*", help="plots to show (default: dvc.yaml's plots whose data exist)")
    args = ap.parse_args(argv)
    if args.write_template:
        Path(args.write_template).write_text(offline_template(), encoding="utf8")
        return 0
    targets = args.targets or [as_target(n) for n in existing_plots(Path("dvc.yaml"), args.suite)]
    if not targets:
        print("error: no plot has data yet; run `dvc repro report_<suite>` first", file=sys.stderr)
        return 1
    revs = [WORKSPACE, *args.diff]
    labels = {rev: labels_at(rev) for rev in revs}
    plots = {}
    for name, specs in dvc_specs(targets, args.diff).items():
        for i, spec in enumerate(specs):
            kept = relabel(spec, labels)
            if kept is not None:
                plots[name if i == 0 else f"{name} ({i + 1})"] = kept
    if not plots:
        print("error: none of the plotted files belongs to a run params.yaml declares", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = "DVC plots: " + (" vs ".join(revs) if args.diff else WORKSPACE)
    html = page(plots, title)
    bad = external_references(html)
    if bad:
        print(f"error: the page still references {bad[:3]}", file=sys.stderr)
        return 1
    (out / "index.html").write_text(html, encoding="utf8")
    unknown = [r for r, lab in labels.items() if lab is None]
    if unknown:
        print(f"note: no readable params.yaml at {', '.join(unknown)}: its curves are all shown, labelled from file "
              "names", file=sys.stderr)
    print(f"{out / 'index.html'}: {len(plots)} plot(s), offline page (Vega inlined), open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
