"""Fixtures of the run tests: an embed + classify config, and a DEST table in each format
(local, and on the test S3 server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertetl.config import EngineConfig


@pytest.fixture
def config(tiny_embed_dir: Path, tiny_classifier_dir: Path) -> EngineConfig:
    return EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), classify_model=str(tiny_classifier_dir)
    )


@pytest.fixture(
    params=[
        "delta",
        pytest.param("delta-s3", marks=pytest.mark.slow),  # the S3 server
        "iceberg",
        pytest.param("iceberg-s3", marks=pytest.mark.slow),
    ]
)
def table_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DEST table address that does not exist yet, in each format; `delta-s3` on the test
    S3 server, reached through the standard environment (endpoint and keys) alone."""
    if request.param == "delta":
        return f"delta://{tmp_path / 'enriched'}"
    if request.param == "delta-s3":
        bucket = request.getfixturevalue("bucket")
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("s3_endpoint"))
        monkeypatch.setenv("AWS_ALLOW_HTTP", "true")  # deltalake's client: plain-HTTP endpoint
        return f"delta://s3://{bucket}/enriched"
    fixture = "iceberg_s3_catalog" if request.param == "iceberg-s3" else "iceberg_catalog"
    return f"iceberg://{request.getfixturevalue(fixture)}/bertetl.enriched"
