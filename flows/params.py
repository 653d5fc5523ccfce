"""Flow parameters: typed pydantic models, so a deployment shows a proper form in the UI."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bertetl.config import EngineConfig
from bertetl.io.vector_index import IndexSpec
from bertetl.observe.options import ObserveOptions
from bertetl.reports.drift import DriftOptions


class RunOptions(BaseModel):
    """How a flow runs: retries and terminal progress."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retries: int = Field(3, ge=0, description="Retries of a chunk or partition on I/O errors.")
    retry_delay_seconds: float = Field(
        2.0, ge=0, description="First retry delay; doubles on each retry, with jitter."
    )
    progress_bar: bool = Field(False, description="Draw a rich progress bar on the terminal.")


def storage_options_field() -> Field:  # type: ignore[valid-type]
    return Field(
        default_factory=dict,
        description=(
            "Options of an object-store SOURCE or DEST (s3://...), e.g. endpoint_url, region "
            "(docs/STORAGE.md). Not for secrets: credentials come from the environment, a "
            "profile or the instance role, and flow parameters are stored by Prefect."
        ),
    )


def index_field() -> Field:  # type: ignore[valid-type]
    return Field(
        None,
        description="The vector index DEST builds and keeps up to date after each run "
        "(lance://, postgresql://; docs/VECTOR_STORES.md); none when unset.",
    )


def overwrite_foreign_field() -> Field:  # type: ignore[valid-type]
    return Field(
        False,
        description="Replace a table DEST that bertetl did not write (it holds rows and no "
        "bertetl commit; refused without this). Its rows stay only in the table's history.",
    )


def observe_field() -> Field:  # type: ignore[valid-type]
    return Field(
        ObserveOptions(),
        description="Metrics to a Pushgateway and the price of a device hour (cost estimate).",
    )


class EnrichParams(BaseModel):
    """An analyst-triggered run: one SOURCE into one DEST."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="Parquet file, folder or glob.")
    dest: str = Field(description="Output folder (or .parquet file for a single input file).")
    engine: EngineConfig
    chunk_rows: int = Field(
        1_000_000, gt=0, description="Files with more rows are cut into row-group chunks."
    )
    run: RunOptions = RunOptions()
    storage_options: dict[str, str] = storage_options_field()
    overwrite_foreign: bool = overwrite_foreign_field()
    observe: ObserveOptions = observe_field()
    index: IndexSpec | None = index_field()


class PartitionedParams(BaseModel):
    """A run over a hive-partitioned SOURCE (`SOURCE/date=2026-11-01/...`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="Partitioned source folder.")
    dest: str = Field(description="Output folder; partitions mirror the source's.")
    partition_column: str = Field(description="Hive partition key, e.g. 'date'.")
    engine: EngineConfig
    reuse: bool = Field(
        True, description="Rows with unchanged text take their earlier outputs (same model)."
    )
    force: bool = Field(
        False, description="Re-enrich partitions even when unchanged, every row through the model."
    )
    run: RunOptions = RunOptions()
    drift: DriftOptions = Field(
        DriftOptions(),
        description="Drift per partition against the ones before it: a warning, never a failure.",
    )
    storage_options: dict[str, str] = storage_options_field()
    overwrite_foreign: bool = overwrite_foreign_field()
    observe: ObserveOptions = observe_field()
    index: IndexSpec | None = index_field()


class BackfillParams(PartitionedParams):
    """Partitions with start <= value <= end (compared as strings: ISO dates sort)."""

    start: str | None = Field(None, description="First partition value (inclusive).")
    end: str | None = Field(None, description="Last partition value (inclusive).")

    @model_validator(mode="after")
    def _range_holds_values(self) -> BackfillParams:
        """An inverted range holds no value: refused here, so a deployment run (not only
        the CLI) says so instead of succeeding with nothing done."""
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(
                f"start {self.start!r} comes after end {self.end!r} (values compare as "
                "strings), so no partition can match: swap --start and --end"
            )
        return self


def _keyed_help(name: str) -> str:
    """A keyed option's description, declared once (`KeyedOptions`)."""
    from bertetl.runs.keyed.plan import KeyedOptions

    return KeyedOptions.model_fields[name].description or ""


class IncrementalParams(PartitionedParams):
    """Every partition that is new or whose input, model or config changed; with `key`, every
    row by key (`bertetl.runs.keyed`): new and changed text inferred, deleted keys removed."""

    partition_column: str | None = Field(  # type: ignore[assignment]
        None, description="Hive partition key, e.g. 'date' (not needed with a key)."
    )
    key: list[str] = Field(
        default_factory=list,
        description="Key columns: rows are matched by key across runs (a table that changes "
        "in place); empty: by partition.",
    )
    keep_deleted: bool = Field(False, description="With a key: " + _keyed_help("keep_deleted"))
    output_columns: Literal["all", "key"] = Field(
        "all", description="With a key: " + _keyed_help("output_columns")
    )

    @model_validator(mode="after")
    def _partition_or_key(self) -> IncrementalParams:
        if not self.key and not self.partition_column:
            raise ValueError("give partition_column (--partition-column), or key (--key)")
        if not self.key and (self.keep_deleted or self.output_columns != "all"):
            raise ValueError("keep_deleted and output_columns need key (--key)")
        return self
