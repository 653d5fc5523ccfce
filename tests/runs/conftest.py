"""Fixtures of the run tests: an embed + classify config, and pyiceberg SQL catalogs (on a
local warehouse, and on the test S3 server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertetl.config import EngineConfig


@pytest.fixture
def config(tiny_embed_dir: Path, tiny_classifier_dir: Path) -> EngineConfig:
    return EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), classify_model=str(tiny_classifier_dir)
    )


@pytest.fixture
def iceberg_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A pyiceberg SQL catalog named `local` on SQLite, configured the way a user would
    (PYICEBERG_CATALOG__LOCAL__... variables), its warehouse a local folder."""
    import pyiceberg.catalog
    from pyiceberg.utils.config import Config

    (tmp_path / "warehouse").mkdir()
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__TYPE", "sql")
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__URI", f"sqlite:///{tmp_path / 'catalog.db'}")
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__WAREHOUSE", f"file://{tmp_path / 'warehouse'}")
    # pyiceberg reads its configuration once, at import: read it again for this test
    monkeypatch.setattr(pyiceberg.catalog, "_ENV_CONFIG", Config())
    return "local"


@pytest.fixture
def iceberg_s3_catalog(iceberg_catalog: str, monkeypatch: pytest.MonkeyPatch, request) -> str:
    """The same SQL catalog with its warehouse in a bucket of the test S3 server (the
    catalog's own `s3.*` properties, as a user configures pyiceberg's FileIO)."""
    import pyiceberg.catalog
    from pyiceberg.utils.config import Config

    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__WAREHOUSE", f"s3://{bucket}/warehouse")
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__S3__ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # bertetl's lock in the warehouse
    monkeypatch.setattr(pyiceberg.catalog, "_ENV_CONFIG", Config())
    return iceberg_catalog
