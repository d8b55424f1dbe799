"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from data_fixtures import FileServer
from greg_ood.data import download as DL


@pytest.fixture
def server(monkeypatch):
    """A local HTTP file server on 127.0.0.1 (``server.add(path, bytes) -> url``), with download back-off shortened."""
    monkeypatch.setattr(DL, "DEFAULT_BACKOFF", 0.01)
    s = FileServer()
    yield s
    s.close()


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """A fresh MLflow SQLite store in a scratch working directory (``MLFLOW_TRACKING_URI`` points at it)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return uri
