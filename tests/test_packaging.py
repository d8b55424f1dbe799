"""The package works without the editable install: built and installed from a scratch copy of pyproject.toml + src/
into a folder of its own, it carries its data files and ``python -m greg_ood.run.dvcgen params.yaml`` run from that
install writes the same dvc.yaml files as the source tree renders."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from greg_ood.run import config as C
from greg_ood.run import dvcgen

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a wheel build and a pip install: about 30 s of CPU
RESOURCES = sorted(p.name for p in (ROOT / "src" / "greg_ood" / "resources").iterdir() if p.is_file())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --no-deps --no-build-isolation --target <site> <copy>``: a regular (non-editable) install."""
    base = tmp_path_factory.mktemp("install")
    copy = base / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    site = base / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-compile", "--target", str(site), str(copy)], capture_output=True, text=True,
                       timeout=600, cwd=base)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return site


def _env(site: Path) -> dict:
    """This interpreter with the installed copy first on the path (ahead of the editable install's .pth entry)."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(site)}


def test_install_carries_every_resource_file(installed):
    got = sorted(p.name for p in (installed / "greg_ood" / "resources").iterdir())
    assert "dvc_suite_template.yaml" in RESOURCES and got == RESOURCES


def test_dvcgen_runs_from_the_installed_package(installed, tmp_path):
    project = tmp_path / "project"  # what dvcgen reads besides its template: params.yaml, stages/, src/ (code deps)
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    code = ("import sys, greg_ood, greg_ood.run.dvcgen as g; print(greg_ood.__file__, file=sys.stderr); "
            "g.main(['params.yaml'])")
    r = subprocess.run([sys.executable, "-c", code], cwd=project, env=_env(installed), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert Path(r.stderr.splitlines()[0]).is_relative_to(installed), r.stderr  # the installed copy ran
    expected = dvcgen.render(C.load(project / "params.yaml"), project)
    assert r.stdout.splitlines() == [f"wrote {rel}" for rel in expected]
    for rel, text in expected.items():
        assert (project / rel).read_text() == text, rel
