"""Fixtures of the run tests: an embed + classify config."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertetl.config import EngineConfig


@pytest.fixture
def config(tiny_embed_dir: Path, tiny_classifier_dir: Path) -> EngineConfig:
    return EngineConfig(
        text_column="text", embed_model=str(tiny_embed_dir), classify_model=str(tiny_classifier_dir)
    )
