from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from tests.servers import ImageServer, LiveServer


def make_settings(tmp_path=None, **overrides) -> Settings:
    base = {"log_json": False, "log_level": "WARNING"}
    if tmp_path is not None:
        base["model_dir"] = tmp_path / "models"
    base.update(overrides)
    return Settings(_env_file=None, **base)


@pytest.fixture
def app_factory(tmp_path):
    """Build the real app with settings overrides; MODEL_DIR is an empty tmp folder unless given."""

    def build(**overrides):
        return create_app(make_settings(tmp_path, **overrides))

    return build


@pytest.fixture
def client(app_factory):
    with TestClient(app_factory()) as c:
        yield c


@pytest.fixture
def client_factory(app_factory):
    clients = []

    def build(raise_server_exceptions: bool = True, **overrides) -> TestClient:
        c = TestClient(app_factory(**overrides), raise_server_exceptions=raise_server_exceptions)
        c.__enter__()
        clients.append(c)
        return c

    yield build
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def image_server():
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture
def live_factory(app_factory):
    servers = []

    def build(**overrides) -> LiveServer:
        s = LiveServer(app_factory(**overrides))
        servers.append(s)
        return s

    yield build
    for s in servers:
        s.close()


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """Run the CLI in-process from an empty folder (no .env) with an empty MODEL_DIR."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    for var in ("LOUPE_SERVER", "LOUPE_API_KEY", "API_KEY", "API_KEYS", "RATE_LIMIT", "PRELOAD_MODELS"):
        monkeypatch.delenv(var, raising=False)
    return work
