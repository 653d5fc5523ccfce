"""Fixtures of the fault suite."""

from __future__ import annotations

import contextlib

import pytest


@pytest.fixture
def nothing_heavy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make starting a Prefect server or loading a model fail loudly; the list records which
    was attempted (empty: the command stopped before either)."""
    import bertetl.flows.local as local
    from bertetl.executors.local import LocalExecutor

    attempted: list[str] = []

    @contextlib.contextmanager
    def no_server():
        attempted.append("server")
        raise AssertionError("a Prefect server would start here")
        yield  # pragma: no cover

    def no_model(self) -> None:
        attempted.append("model")
        raise AssertionError("a model would load here")

    monkeypatch.setattr(local, "local_api", no_server)
    monkeypatch.setattr(LocalExecutor, "setup", no_model)
    return attempted


@pytest.fixture(scope="session")
def zygote(prefect_harness: dict, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """The session's killed runs fork from one process that imported the CLI
    (`tests/faults/zygote.py`), started with the session's Prefect API URL and the S3
    server's keys in its environment (both are read at import). Every test that uses it runs
    on one xdist worker (`tests/conftest.py`), so it is started once."""
    import os
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    from tests.faults.zygote import Zygote

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    repo = Path(__file__).resolve().parents[2]
    zygote = Zygote(env, repo, tmp_path_factory.mktemp("zygote"))
    yield zygote
    zygote.close()
