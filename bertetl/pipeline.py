"""Compose read → validate → tokenize → infer → write for each input file."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bertetl.commit import DestinationLock, clean_staging, staged_folder
from bertetl.config import EngineConfig
from bertetl.errors import ExecutorError, FilesFailedError, InputError, is_transient
from bertetl.infer import ClassifyStage, EmbedStage, EncoderStage
from bertetl.models import max_length_for, resolve_model_dir, tokenizer_key
from bertetl.overlap import prefetch
from bertetl.read import (
    SourceFile,
    check_text_column,
    discover,
    read_schema,
    source_root,
    stream,
)
from bertetl.reuse import ReuseIndex, transform_with_reuse
from bertetl.schema import LABEL, TOKENS_PREFIX, error_field, output_schema
from bertetl.stage import Stage, StageCounters
from bertetl.tokenize import TokenizeStage, ValidateTextStage
from bertetl.write import ParquetSink

log = logging.getLogger(__name__)


@dataclass
class FileResult:
    """What happened to one input file."""

    source: str
    dest: str | None
    rows: int = 0
    rows_failed: int = 0
    rows_reused: int = 0
    seconds: float = 0.0
    error: str | None = None
    retryable: bool = False  # the error may pass on a retry (an I/O error, not bad data)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class EnrichReport:
    """The outcome of a run: per-file results and per-stage counters."""

    files: list[FileResult] = field(default_factory=list)
    stages: dict[str, StageCounters] = field(default_factory=dict)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    truncated_rows: int = 0
    oom_splits: int = 0
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files if f.error is None)

    @property
    def rows_failed(self) -> int:
        """Rows kept with an `enrich_error` (null, empty or blank text)."""
        return sum(f.rows_failed for f in self.files if f.error is None)

    @property
    def failures(self) -> dict[str, str]:
        return {f.source: f.error for f in self.files if f.error is not None}

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def merge(self, other: EnrichReport) -> None:
        """Add another report's files and counters (a worker's part of the run)."""
        self.files.extend(other.files)
        for name, counters in other.stages.items():
            self.stages.setdefault(name, StageCounters()).add(counters)
        merge_label_counts(self.label_counts, other.label_counts)
        self.truncated_rows += other.truncated_rows
        self.oom_splits += other.oom_splits

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rows_failed": self.rows_failed,
            "rows_truncated": self.truncated_rows,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "oom_splits": self.oom_splits,
            "files": [vars(f) for f in self.files],
            "failures": self.failures,
            "label_counts": self.label_counts,
            "stages": {
                name: {**vars(c), "padding_waste": round(c.padding_waste, 4)}
                for name, c in self.stages.items()
            },
        }


def count_labels(
    batch: pa.RecordBatch | pa.Table, columns: list[str], counts: dict[str, dict[str, int]]
) -> None:
    """Add the batch's label counts (nulls left out) into `counts`, by column."""
    for column in columns:
        tally = counts.setdefault(column, {})
        for item in pc.value_counts(batch.column(column)).to_pylist():
            if item["values"] is not None:
                tally[item["values"]] = tally.get(item["values"], 0) + item["counts"]


def merge_label_counts(into: dict[str, dict[str, int]], counts: dict[str, dict[str, int]]) -> None:
    """Add `counts` (label counts by column) into `into`, keeping labels sorted."""
    for column, tally in counts.items():
        merged = into.setdefault(column, {})
        for label, count in tally.items():
            merged[label] = merged.get(label, 0) + count
        into[column] = dict(sorted(merged.items()))


def dest_path(file: SourceFile, source: str, dest: str) -> Path:
    """Where a file's output goes: DEST itself for a single-file source and a `.parquet`
    DEST, else DEST/<the file's path under the source root> (partition folders kept)."""
    if os.path.isfile(source) and dest.endswith(".parquet"):
        return Path(dest)
    return Path(dest) / file.relative


def dest_root(source: str, dest: str) -> tuple[Path, str | None]:
    """The folder a run locks and cleans, and the one output file name when DEST is a file."""
    if os.path.isfile(source) and dest.endswith(".parquet"):
        return Path(dest).parent, Path(dest).name
    return Path(dest), None


def _check_paths(files: list[SourceFile], source: str, dest: str) -> None:
    dest_real = Path(dest).resolve()
    for file in files:
        if Path(file.path).resolve() == dest_path(file, source, dest).resolve():
            raise InputError(f"output {dest} would overwrite input {file.path}; pick another DEST")
        if Path(file.path).resolve().is_relative_to(dest_real):
            raise InputError(
                f"input {file.path} lies inside DEST {dest}; pick a DEST outside the source"
            )
    if not os.path.isfile(source) and dest_real.is_relative_to(source_root(source).resolve()):
        raise InputError(f"DEST {dest} lies inside SOURCE {source}; pick a DEST outside it")


class Pipeline:
    """The engine for one config: models load once in `setup()`, then `run_file()` per file."""

    #: Whether `run_files` applies a `ReuseIndex` (the Ray executor sends every row to the models).
    reuses_rows = True

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
                )
            tokenizer = self.tokenizers[key]
            stage_cls = EmbedStage if kind == "embed" else ClassifyStage
            extra = (
                {"include_scores": config.include_scores, "threshold": config.multi_label_threshold}
                if kind == "classify"
                else {}
            )
            self.models.append(
                stage_cls(
                    model_dir,
                    tokenizer.tokens_column,
                    prefix=config.prefix,
                    device=config.device,
                    dtype=config.dtype,
                    quantize=config.quantize,
                    batch_tokens=config.batch_tokens,
                    max_batch_rows=config.max_batch_rows,
                    allow_pickle=config.allow_pickle,
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
        for stage in [self.validate, *self.tokenizers.values()]:
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
        """Drop the token columns and move `enrich_error` to the end, after the model outputs."""
        error_column = self.validate.error_column
        keep = [
            name
            for name in batch.schema.names
            if not name.startswith(TOKENS_PREFIX) and name != error_column
        ]
        return batch.select(keep).append_column(
            error_field(self.config.prefix), batch.column(error_column)
        )

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
        row_groups: list[int] | None = None,
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
        counts: dict[str, int] = {}
        batches = stream(file, self.config.window_rows, row_groups)
        if reuse is None:
            enriched = self.transform(batches)
        else:
            enriched = transform_with_reuse(
                self.transform, batches, reuse, self.config.text_column, output, counts
            )
        sink.open()
        try:
            for batch in enriched:
                if on_batch is not None:
                    on_batch(batch)
                sink.write(batch)
                result.rows_failed += batch.num_rows - batch.column(error_name).null_count
                count_labels(batch, label_columns, result.label_counts)
            sink.commit()
        except InputError as e:
            sink.abort()
            result.error, result.dest, result.retryable = str(e), None, is_transient(e)
        except BaseException:
            sink.abort()
            raise
        result.rows = sink.rows
        result.rows_reused = counts.get("reused", 0)
        result.seconds = time.perf_counter() - started
        return result

    @property
    def truncated_rows(self) -> int:
        """Rows cut at the model's max length so far."""
        return max((t.truncated_rows for t in self.tokenizers.values()), default=0)

    def label_columns(self) -> list[str]:
        """The added single-label column, whose counts reports and manifests keep."""
        label = self.config.prefix + LABEL
        return [f.name for f in self.added_fields() if f.name == label]

    def run_files(
        self,
        jobs: list[Job],
        reuse: ReuseIndex | None = None,
        on_rows: Callable[[int], None] | None = None,
        stop_at_error: bool = False,
        scratch: Path | None = None,
    ) -> list[FileResult]:
        """Enrich each (file, target, schema) job into its target, one after another
        (`stop_at_error`: none after the first failed file). `on_rows(n)` reports progress;
        `scratch` is a staging folder the Ray executor needs (unused here).

        The Ray executor (`bertetl.ray_pipeline.RayPipeline`) runs the same jobs as one
        Ray Data pipeline instead.
        """
        results: list[FileResult] = []
        on_batch = None if on_rows is None else (lambda batch: on_rows(batch.num_rows))
        for file, target, schema in jobs:
            if stop_at_error and any(r.error is not None for r in results):
                break
            results.append(self.run_file(file, target, schema, reuse=reuse, on_batch=on_batch))
        return results


Job = tuple[SourceFile, Path, pa.Schema]


def make_pipeline(config: EngineConfig) -> Pipeline:
    """The pipeline for `config.executor`: `Pipeline` (this process) or `RayPipeline`."""
    if config.executor == "local":
        return Pipeline(config)
    try:
        from bertetl.ray_pipeline import RayPipeline
    except ImportError as e:
        raise ExecutorError(
            f"--executor ray needs Ray Data: pip install 'bertetl[ray]' ({e})"
        ) from e
    return RayPipeline(config)


def resolve_workers(config: EngineConfig) -> int:
    """`workers`, else one per visible GPU when running on CUDA, else 1."""
    if config.workers:
        return config.workers
    if config.device == "cpu":
        return 1
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def _pin_worker(index: int, count: int) -> None:
    """Worker `index` of `count` takes GPU `index` (round robin), or its share of CPU threads."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))


def run_jobs(
    config: EngineConfig,
    jobs: list[Job],
    worker: tuple[int, int] | None = None,
    on_file_done: Callable[[FileResult], None] | None = None,
) -> EnrichReport:
    """Enrich `jobs` (file, target, schema) with one pipeline in this process.

    `worker=(index, count)` marks a worker process: it pins a GPU or a share of CPU threads.
    """
    if worker is not None:
        _pin_worker(*worker)
    pipeline = Pipeline(config)
    pipeline.setup()
    report = EnrichReport()
    try:
        for file, target, schema in jobs:
            result = pipeline.run_file(file, target, schema)
            report.files.append(result)
            if on_file_done is not None:
                on_file_done(result)
    finally:
        pipeline.teardown()
    for stage in pipeline.stages:
        report.stages.setdefault(stage.name, StageCounters()).add(stage.counters)
    for model in pipeline.models:
        report.oom_splits += model.oom_splits
        if isinstance(model, ClassifyStage):
            report.label_counts[model.prefix + LABEL] = dict(sorted(model.label_counts.items()))
    report.truncated_rows = pipeline.truncated_rows
    return report


def enrich(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    config: EngineConfig,
    on_file_done: Callable[[FileResult], None] | None = None,
    raise_on_failure: bool = True,
) -> EnrichReport:
    """Enrich every Parquet file under `source` into the same layout under `dest`.

    Schemas are checked (text column present and textual) before any model loads. A file
    that cannot be read fails alone: its output is not written, the others are committed,
    and `FilesFailedError` is raised at the end (unless `raise_on_failure` is false).
    """
    started = time.perf_counter()
    source, dest = os.fspath(source), os.fspath(dest)
    files = discover(source)
    _check_paths(files, source, dest)
    report = EnrichReport()
    schemas: dict[str, pa.Schema] = {}
    preflight_errors: list[InputError] = []
    for file in files:
        try:
            schema = read_schema(file)
            check_text_column(file, schema, config.text_column)
            schemas[file.path] = schema
        except InputError as e:
            preflight_errors.append(e)
            report.files.append(FileResult(file.path, None, error=str(e)))
    if not schemas:
        raise preflight_errors[0]
    pipeline = make_pipeline(config)
    for path, schema in schemas.items():
        try:
            pipeline.output_schema(schema)  # name clashes fail before any model loads
        except InputError as e:
            raise InputError(f"{path}: {e}") from e
    jobs = [
        (file, dest_path(file, source, dest), schemas[file.path])
        for file in files
        if file.path in schemas
    ]
    lock_dir, only_file = dest_root(source, dest)
    with DestinationLock(lock_dir):
        clean_staging(lock_dir, only_file)
        if config.executor == "local":
            _run(config, jobs, report, on_file_done)
        else:
            _run_distributed(pipeline, jobs, lock_dir, report, on_file_done)
    report.files.sort(key=lambda f: f.source)
    report.seconds = time.perf_counter() - started
    if raise_on_failure and report.failures:
        raise FilesFailedError(report.failures, report)
    return report


def _run(
    config: EngineConfig,
    jobs: list[Job],
    report: EnrichReport,
    on_file_done: Callable[[FileResult], None] | None,
) -> None:
    """Run `jobs` here, or split across worker processes; results go into `report`."""
    workers = min(resolve_workers(config), len(jobs))
    if workers <= 1:
        report.merge(run_jobs(config, jobs, on_file_done=on_file_done))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [
                pool.submit(run_jobs, config, jobs[i::workers], (i, workers))
                for i in range(workers)
            ]
            for future in as_completed(futures):
                part = future.result()
                report.merge(part)
                for result in part.files:
                    if on_file_done is not None:
                        on_file_done(result)


def _run_distributed(
    pipeline: Pipeline,
    jobs: list[Job],
    lock_dir: Path,
    report: EnrichReport,
    on_file_done: Callable[[FileResult], None] | None,
) -> None:
    """Run `jobs` as one pipeline on the executor's cluster; results go into `report`."""
    pipeline.setup()
    try:
        with staged_folder(lock_dir) as scratch:
            results = pipeline.run_files(jobs, scratch=scratch)
    finally:
        pipeline.teardown()
    report.truncated_rows = pipeline.truncated_rows
    for result in results:
        report.files.append(result)
        merge_label_counts(report.label_counts, result.label_counts)
        if on_file_done is not None:
            on_file_done(result)
