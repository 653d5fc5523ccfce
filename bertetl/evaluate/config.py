"""What to evaluate and how: one frozen model for the CLI, the Python API and the flow."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bertetl.config import EngineConfig


class EvaluateConfig(BaseModel):
    """A labelled table's true labels against a classifier's predictions.

    With `engine` (its `classify_model` set) the model runs over the table through the engine
    (streaming, batching, long-text options, any executor); without it the table already holds
    the predictions that `enrich --classify-model --scores` writes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    label_column: str = Field(
        description="Column holding the true label: a string, integer, boolean or dictionary "
        "column, or a list of them for a multi-label model."
    )
    engine: EngineConfig | None = Field(
        None,
        description="Run this engine's classify_model over the table; none: the table "
        "already holds the predictions (`label`, `score`, `scores`, `labels`).",
    )
    text_column: str | None = Field(
        None,
        description="Column holding the text, shown for misclassified rows (with an engine: "
        "the engine's text_column).",
    )
    prefix: str | None = Field(
        None,
        description="Prefix of the prediction columns in a table already enriched "
        "(with an engine: the engine's prefix).",
    )
    calibration_bins: int = Field(
        10, ge=2, le=100, description="Equal-width probability bins of the reliability diagram."
    )
    confused_pairs: int = Field(
        5, ge=0, description="Worst confused pairs (or worst labels, multi-label) listed."
    )
    examples: int = Field(
        5, ge=0, description="Misclassified rows shown per confused pair (most confident first)."
    )

    @model_validator(mode="after")
    def _one_source_of_columns(self) -> EvaluateConfig:
        if self.engine is None:
            return self
        if not self.engine.classify_model:
            raise ValueError("evaluate runs a classifier: give classify_model (--classify-model)")
        if self.engine.embed_model:
            raise ValueError("evaluate runs the classifier only: leave embed_model out")
        if self.text_column not in (None, self.engine.text_column):
            raise ValueError("text_column differs from the engine's text_column: give it once")
        if self.prefix not in (None, self.engine.prefix):
            raise ValueError("prefix differs from the engine's prefix: give it once")
        return self

    @property
    def text(self) -> str | None:
        """The text column, from the engine when there is one."""
        return self.engine.text_column if self.engine is not None else self.text_column

    @property
    def column_prefix(self) -> str:
        """The prediction columns' prefix, from the engine when there is one."""
        if self.engine is not None:
            return self.engine.prefix
        return self.prefix or ""
