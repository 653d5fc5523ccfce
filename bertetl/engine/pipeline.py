"""Compose read → validate → tokenize → infer → write for one input file.

`Pipeline` holds the stages for one config; executors (`bertetl.executors`) decide where and
how many of them run. Nothing here knows which executor runs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from bertetl.config import EngineConfig
from bertetl.engine.encoders import ClassifyStage, EmbedStage, EncoderStage, ModelRuntime
from bertetl.engine.long_text import LongTextOptions
from bertetl.engine.model_files import max_length_for, resolve_model_dir, tokenizer_key
from bertetl.engine.prefetch import prefetch
from bertetl.engine.reuse import ReuseIndex, transform_with_reuse
from bertetl.engine.stage import Stage
from bertetl.engine.tokenize import TokenizeStage, ValidateTextStage
from bertetl.errors import InputError, is_transient
from bertetl.io.read import SourceFile, check_text_column, read_schema, stream
from bertetl.io.write import ParquetSink
from bertetl.report import (
    EnrichReport,
    FileResult,
    MeanColumns,
    StageCounters,
    add_column_sums,
    count_labels,
)
from bertetl.schema import (
    LABEL,
    STATS_PREFIX,
    TOKENS_PREFIX,
    error_field,
    output_schema,
    token_stats_fields,
)

log = logging.getLogger(__name__)


class Pipeline:
    """The engine for one config: models load once in `setup()`, then `run_file()` per file."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.validate = ValidateTextStage(config.text_column, config.prefix)
        self.tokenizers: dict[str, TokenizeStage] = {}
        self.models: list[EncoderStage] = []
        #: Each configured model's resolved directory, by config field (`embed_model`, …).
        self.model_dirs: dict[str, Path] = {}
        specs = [("embed", config.embed_model), ("classify", config.classify_model)]
        for kind, spec in specs:
            if not spec:
                continue
            model_dir = resolve_model_dir(spec, config.allow_pickle)
            self.model_dirs[f"{kind}_model"] = model_dir
            key = tokenizer_key(model_dir, max_length_for(model_dir, config.max_length))
            if key not in self.tokenizers:  # models with the same tokenizer share its tokens
                self.tokenizers[key] = TokenizeStage(
                    model_dir,
                    config.text_column,
                    self.validate.error_column,
                    key,
                    config.max_length,
                    LongTextOptions.from_config(config),
                )
            tokenizer = self.tokenizers[key]
            stage_cls = EmbedStage if kind == "embed" else ClassifyStage
            extra: dict[str, Any] = (
                {"include_scores": config.include_scores, "threshold": config.multi_label_threshold}
                if kind == "classify"
                else {}
            )
            self.models.append(
                stage_cls(
                    model_dir,
                    tokenizer.tokens_column,
                    prefix=config.prefix,
                    runtime=ModelRuntime.from_config(config),
                    windowed=config.long_text == "window",
                    **extra,
                )
            )
        self._ready = False

    @property
    def stages(self) -> list[Stage]:
        return [self.validate, *self.tokenizers.values(), *self.models]

    def added_fields(self) -> list[pa.Field]:
        """The columns this pipeline appends, in output order."""
        fields = [f for model in self.models for f in model.fields()]
        if self.config.token_stats:
            fields += token_stats_fields(self.config.prefix)
        return [*fields, error_field(self.config.prefix)]

    def setup(self) -> None:
        """Load tokenizers and models (local files only)."""
        if self._ready:
            return
        self.setup_tokenizers()
        self.setup_models()
        self._ready = True

    def setup_tokenizers(self) -> None:
        """Load the tokenizers only (a worker that runs `prepare()`)."""
        for tokenizer in self.tokenizers.values():
            tokenizer.setup()

    def setup_models(self) -> None:
        """Load the models only (a worker that runs `infer()` and `finish()`)."""
        for model in self.models:
            model.setup()

    def teardown(self) -> None:
        for stage in self.stages:
            stage.teardown()
        self._ready = False

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return output_schema(input_schema, self.added_fields())

    def check_file(self, file: SourceFile) -> pa.Schema:
        """The file's schema, once its text column is checked and the added columns are
        known not to clash with its own (`InputError` naming the file otherwise)."""
        schema = read_schema(file)
        check_text_column(file, schema, self.config.text_column)
        try:
            self.output_schema(schema)
        except InputError as e:
            raise InputError(f"{file.path}: {e}") from e
        return schema

    def prepare(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The CPU stages: validate the text, then tokenize it (token columns appended)."""
        stream_: Iterable[pa.RecordBatch] = batches
        cpu_stages: list[Stage] = [self.validate, *self.tokenizers.values()]
        for stage in cpu_stages:
            stream_ = stage(stream_)
        return iter(stream_)

    def infer(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The model stages, on prepared batches; then `finish` each batch."""
        stream_: Iterable[pa.RecordBatch] = batches
        for stage in self.models:
            stream_ = stage(stream_)
        for batch in stream_:
            yield self.finish(batch)

    def finish(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Drop the token columns, add the `--token-stats` columns (from the first model's
        tokenizer) and move `enrich_error` to the end, after the model outputs."""
        error_column = self.validate.error_column
        keep = [
            name
            for name in batch.schema.names
            if not name.startswith((TOKENS_PREFIX, STATS_PREFIX)) and name != error_column
        ]
        out = batch.select(keep)
        if self.config.token_stats:
            stats = batch.column(self.stats_column)
            for field, column in zip(
                token_stats_fields(self.config.prefix), stats.flatten(), strict=True
            ):
                out = out.append_column(field, column)
        return out.append_column(error_field(self.config.prefix), batch.column(error_column))

    @property
    def stats_column(self) -> str:
        """The stats of the first model's tokenizer: the one `--token-stats` reports."""
        return self.models[0].tokens_column.replace(TOKENS_PREFIX, STATS_PREFIX, 1)

    def transform(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Thread the stages over a stream of batches; yields the enriched batches in order.

        Reading, validation and tokenization run in a background thread, at most
        `prefetch_windows` windows ahead of the models.
        """
        prepared = self.prepare(batches)
        if self.config.prefetch_windows:
            prepared = prefetch(prepared, self.config.prefetch_windows)
        return self.infer(prepared)

    def run_file(
        self,
        file: SourceFile,
        target: Path,
        schema: pa.Schema,
        row_groups: list[int] | tuple[int, ...] | None = None,
        reuse: ReuseIndex | None = None,
        on_batch: Callable[[pa.RecordBatch], None] | None = None,
    ) -> FileResult:
        """Enrich one file (or some of its row groups) into `target`, atomically.

        Rows whose text is in `reuse` take their earlier outputs instead of the models.
        `on_batch` sees each output batch before it is written. Read failures are recorded
        in the result, not raised.
        """
        started = time.perf_counter()
        result = FileResult(file.path, str(target))
        output = self.output_schema(schema)
        sink = ParquetSink(target, output)
        error_name = error_field(self.config.prefix).name
        label_columns = self.label_columns()
        mean_columns = MeanColumns.of(output, error_name, label_columns)
        counts: dict[str, int] = {}
        batches = stream(
            file, self.config.window_rows, list(row_groups) if row_groups is not None else None
        )
        if reuse is None:
            enriched = self.transform(batches)
        else:
            enriched = transform_with_reuse(
                self.transform, batches, reuse, self.config.text_column, output, counts
            )
        truncated_before = self.truncated_rows
        sink.open()
        try:
            for batch in enriched:
                if on_batch is not None:
                    on_batch(batch)
                sink.write(batch)
                result.rows_failed += batch.num_rows - batch.column(error_name).null_count
                count_labels(batch, label_columns, result.label_counts)
                add_column_sums(batch, mean_columns, result)
            sink.commit()
        except InputError as e:
            sink.abort()
            result.error, result.dest, result.retryable = str(e), None, is_transient(e)
        except BaseException:
            sink.abort()
            raise
        result.rows = sink.rows
        result.rows_reused = counts.get("reused", 0)
        result.rows_truncated = self.truncated_rows - truncated_before
        result.seconds = time.perf_counter() - started
        return result

    @property
    def truncated_rows(self) -> int:
        """Rows so far whose text the model did not see whole (by the first model's
        tokenizer, the one `--token-stats` reports)."""
        first = self.models[0].tokens_column
        return next(t.truncated_rows for t in self.tokenizers.values() if t.tokens_column == first)

    def label_columns(self) -> list[str]:
        """The added single-label column, whose counts reports and manifests keep."""
        label = self.config.prefix + LABEL
        return [f.name for f in self.added_fields() if f.name == label]

    def collect(self, report: EnrichReport) -> None:
        """Add this pipeline's counters (stages, OOM splits) to `report`."""
        for stage in self.stages:
            report.stages.setdefault(stage.name, StageCounters()).add(stage.counters)
        for model in self.models:
            report.oom_splits += model.oom_splits
