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
