"""Fixtures shared by the data tests."""
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
