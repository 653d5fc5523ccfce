"""Compose read → validate → tokenize → infer → write for one input file.

`Pipeline` holds the stages for one config; executors (`bertetl.executors`) decide where and
how many of them run. Nothing here knows which executor runs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.config import ClassifierHead, EngineConfig, NerHead, ZeroShotHead
from bertetl.engine.embed import EmbedOptions, EmbedStage, resolve_prompt
from bertetl.engine.encoders import ClassifyStage, EncoderStage, ModelRuntime
from bertetl.engine.heads import check_sequence_classifier, head_prefix
from bertetl.engine.heap import HeapTrim
from bertetl.engine.hub import parse_hub_name
from bertetl.engine.long_text import LongTextOptions
from bertetl.engine.model_files import (
    max_length_for,
    pinned_spec,
    resolve_model_dir,
    tokenizer_key,
)
from bertetl.engine.ner import NerOptions, NerStage, NerTokenizeStage, ner_stages
from bertetl.engine.prefetch import prefetch
from bertetl.engine.remote_models import is_model_uri
from bertetl.engine.reuse import ReuseIndex, transform_with_reuse
from bertetl.engine.stage import Stage
from bertetl.engine.tokenize import TokenizerSnapshot, TokenizeStage, ValidateTextStage
from bertetl.engine.tokenizer_pool import TokenizerPool
from bertetl.engine.window_rows import window_rows
from bertetl.engine.zero_shot import ZeroShotStage
from bertetl.errors import InputError, ModelError, is_transient
from bertetl.io.output import OutputCounts, write_output
from bertetl.io.read import SourceFile, check_text_column, read_schema, stream
from bertetl.io.sink import SinkFactory
from bertetl.io.stores.locations import Location
from bertetl.io.write import ParquetSink
from bertetl.results import (
    EnrichReport,
    FileResult,
    StageCounters,
)
from bertetl.schema import (
    INTERNAL_PREFIX,
    LABEL,
    SPANS_PREFIX,
    STAGE_PREFIXES,
    STATS_PREFIX,
    TOKENS_PREFIX,
    ZERO_SHOT_PREFIX,
    error_field,
    output_schema,
    token_stats_fields,
    window_row_fields,
)

log = logging.getLogger(__name__)

#: A stage that `infer` runs: a model (an encoder) or a head over an encoder's output.
ModelStage = EncoderStage | ZeroShotStage | NerStage
EncoderT = TypeVar("EncoderT", bound=EncoderStage)


class Pipeline:
    """The engine for one config: models load once in `setup()`, then `run_file()` per file."""

    #: Each kind of head (`bertetl.config.Head`) -> the method that builds its stages. A new
    #: kind (e.g. `ner`) adds its config model to `Head` and one line here.
    HEAD_STAGES: ClassVar[dict[str, str]] = {
        "classify": "_classify_stages",
        "zero_shot": "_zero_shot_stages",
        "ner": "_ner_stages",
    }

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.validate = ValidateTextStage(config.text_column, config.prefix)
        self.tokenizers: dict[str, TokenizeStage] = {}
        #: NER heads tokenize on their own (they need each token's character offsets).
        self.ner_tokenizers: dict[str, NerTokenizeStage] = {}
        self.models: list[ModelStage] = []
        #: The resolved directory of each model given by a config field (`embed_model`,
        #: `classify_model`, `zero_shot_model`); `head_dirs` has the `--classify` and `--ner`
        #: heads' (head names are unique across kinds).
        self.model_dirs: dict[str, Path] = {}
        self.head_dirs: dict[str, Path] = {}
        #: Each Hub model's folder -> its name pinned to the commit it resolved to.
        self.pinned: dict[Path, str] = {}
        self.runtime = ModelRuntime.from_config(config)
        self.embed: EmbedStage | None = None
        self._zero_shot_encoder: tuple[EmbedStage, str] | None = None
        # Every model directory and classifier kind is checked before any stage is built.
        if config.embed_model:
            self.model_dirs["embed_model"] = self._resolve(config.embed_model)
        heads_with_models: list[ClassifierHead | NerHead] = [*config.classify, *config.ner]
        for head in heads_with_models:
            self.head_dirs[head.name] = self._resolve(head.model)
        if config.classify_model:
            self.model_dirs["classify_model"] = self._resolve(config.classify_model)
        if config.zero_shot and config.zero_shot_model:
            self.model_dirs["zero_shot_model"] = self._resolve(config.zero_shot_model)
        for head in config.classify:
            check_sequence_classifier(self.head_dirs[head.name], f"--classify {head.name}=")
        if config.classify_model:
            check_sequence_classifier(self.model_dirs["classify_model"], "--classify-model")
        if config.embed_model:
            model_dir = self.model_dirs["embed_model"]
            self.embed = self._encoder(
                EmbedStage,
                model_dir,
                config.prefix,
                prompt=self._prompt(model_dir, config.prompt, config.prompt_name),
                options=EmbedOptions(
                    config.embed_dim, config.embed_precision, windows=config.emits_windows
                ),
            )
            self.models.append(self.embed)
        for each in config.heads():
            self.models.extend(getattr(self, self.HEAD_STAGES[each.kind])(each))
        self._ready = False
        #: Worker processes that run `prepare` (`start_tokenizer_pool`); None: in-process.
        self.tokenizer_pool: TokenizerPool | None = None
        #: Trims the heap after so many rows or bytes of windows (`engine.heap`), not by time.
        self.heap_trim = HeapTrim()

    def _resolve(self, spec: str) -> Path:
        config = self.config
        path = resolve_model_dir(spec, config.allow_pickle, config.model_storage_options)
        if parse_hub_name(spec) is not None:  # workers load the commit resolved here
            self.pinned[path] = pinned_spec(spec, config.allow_pickle)
        elif is_model_uri(spec):  # workers on other machines fetch their own copy
            self.pinned[path] = spec
        return path

    def _portable(self, path: Path) -> str:
        """How a worker (another process or node) names the model at `path`: a Hub model
        by `ORG/NAME@COMMIT`, an object-store folder by its URI, a folder by its absolute
        path."""
        return self.pinned.get(path) or str(path.resolve())

    def _prompt(self, model_dir: Path, prompt: str | None, prompt_name: str | None) -> str:
        """An embedding model's prompt (`engine.embed.resolve_prompt`), checked against the
        long-text mode (a prompt would open only the first token window)."""
        text = resolve_prompt(model_dir, prompt, prompt_name)
        if text and self.config.long_text == "window":
            raise ModelError(
                f"{model_dir} puts the prompt {text!r} before each text (its "
                "default_prompt_name): --long-text window is not supported with a prompt; "
                "use --long-text truncate"
            )
        return text

    def _encoder(
        self,
        stage_cls: type[EncoderT],
        model_dir: Path,
        prefix: str,
        prompt: str = "",
        **extra: Any,
    ) -> EncoderT:
        """A model stage, fed by the tokenize stage of its tokenizer and prompt (models with
        the same tokenizer and prompt share its tokens)."""
        config = self.config
        key = tokenizer_key(model_dir, max_length_for(model_dir, config.max_length), prompt)
        if key not in self.tokenizers:
            self.tokenizers[key] = TokenizeStage(
                model_dir,
                config.text_column,
                self.validate.error_column,
                key,
                config.max_length,
                LongTextOptions.from_config(config),
                prompt=prompt,
                spans=config.emits_windows,
            )
        return stage_cls(
            model_dir,
            self.tokenizers[key].tokens_column,
            prefix=prefix,
            runtime=self.runtime,
            windowed=config.long_text == "window",
            **extra,
        )

    def _classify_stages(self, head: ClassifierHead) -> list[ModelStage]:
        """A sequence classifier: `--classify-model` (unnamed) or `--classify NAME=DIR`."""
        model_dir = self.head_dirs[head.name] if head.name else self.model_dirs["classify_model"]
        stage = self._encoder(
            ClassifyStage,
            model_dir,
            head_prefix(self.config.prefix, head.name),
            include_scores=self.config.include_scores,
            threshold=self.config.multi_label_threshold,
            option=f"--classify {head.name}=" if head.name else "--classify-model",
        )
        if head.name:
            stage.name = f"classify:{head.name}"
        return [stage]

    def _zero_shot_stages(self, head: ZeroShotHead) -> list[ModelStage]:
        """A zero-shot label set over the row embeddings: the `--embed-model`'s own when it
        is the zero-shot model, else those of an `EmbedStage` added (once) for
        `--zero-shot-model`, whose column is internal (not written)."""
        stages: list[ModelStage] = []
        model_dir = self.model_dirs.get("zero_shot_model")
        if self.embed is not None and model_dir in (None, self.embed.model_dir):
            encoder, column = self.embed, self.embed.fields()[0].name
        else:
            if self._zero_shot_encoder is None:
                assert model_dir is not None  # the config asks for one without --embed-model
                prompt = self._prompt(model_dir, None, None)
                stage = self._encoder(EmbedStage, model_dir, ZERO_SHOT_PREFIX, prompt=prompt)
                stage.name = "zero_shot_embed"
                self._zero_shot_encoder = (stage, stage.fields()[0].name)
                stages.append(stage)
            encoder, column = self._zero_shot_encoder
        stages.append(ZeroShotStage(head, encoder, column, self.config))
        return stages

    def _ner_stages(self, head: NerHead) -> list[ModelStage]:
        """A token classifier: its own tokenize stage (offsets kept; shared by NER heads with
        the same tokenizer) and its model stage, writing `NAME_entities`."""
        config = self.config
        tokenize, stage = ner_stages(
            self.head_dirs[head.name],
            config.text_column,
            head.name,
            prefix=config.prefix,
            options=NerOptions(config.ner_aggregation, config.ner_labels or None, config.redact),
            max_length=config.max_length,
            long_text=LongTextOptions.from_config(config),
            runtime=self.runtime,
        )
        # heads whose models share a tokenizer (same key, same column) share its tokens
        self.ner_tokenizers.setdefault(tokenize.tokens_column, tokenize)
        stage.name = f"ner:{head.name}"
        return [stage]

    def embedding_ranges(self) -> dict[str, list[list[float]]]:
        """The int8/uint8 ranges the embedding stage calibrated (by column; empty before its
        first window, or at other precisions), for the manifest."""
        if self.embed is None or self.embed.ranges is None:
            return {}
        return {self.embed.fields()[0].name: self.embed.ranges.tolist()}

    def use_embedding_ranges(self, ranges: Mapping[str, list[list[float]]]) -> None:
        """Quantize with `ranges` (`embedding_ranges()` of an earlier run with this config)
        instead of calibrating anew."""
        if self.embed is not None and ranges.get(self.embed.fields()[0].name):
            self.embed.ranges = np.array(ranges[self.embed.fields()[0].name], dtype=np.float32)

    def absolute_config(self) -> EngineConfig:
        """The config with every model directory absolute (for workers on other nodes, or
        in another working directory)."""
        update: dict[str, Any] = {k: self._portable(path) for k, path in self.model_dirs.items()}
        if self.config.classify:
            update["classify"] = tuple(
                head.model_copy(update={"model": self._portable(self.head_dirs[head.name])})
                for head in self.config.classify
            )
        if self.config.ner:
            update["ner"] = tuple(
                head.model_copy(update={"model": self._portable(self.head_dirs[head.name])})
                for head in self.config.ner
            )
        return self.config.model_copy(update=update)

    @property
    def stages(self) -> list[Stage]:
        return [self.validate, *self.tokenize_stages, *self.models]

    @property
    def tokenize_stages(self) -> list[TokenizeStage | NerTokenizeStage]:
        return [*self.tokenizers.values(), *self.ner_tokenizers.values()]

    def added_fields(self) -> list[pa.Field]:
        """The columns this pipeline appends, in output order."""
        fields = [
            f
            for model in self.models
            for f in model.fields()
            if not f.name.startswith(INTERNAL_PREFIX)
        ]
        if self.config.emits_windows:
            fields = window_row_fields(self.config.prefix, fields, self._keeps_row_embedding)
        if self.config.token_stats:
            fields += token_stats_fields(self.config.prefix)
        return [*fields, error_field(self.config.prefix)]

    @property
    def _keeps_row_embedding(self) -> bool:
        """`--emit rows,windows`: window rows carry the row's pooled embedding too."""
        return self.config.emit == "rows,windows"

    def setup(self) -> None:
        """Load tokenizers and models (local files only)."""
        if self._ready:
            return
        self.setup_tokenizers()
        self.setup_models()
        self._ready = True

    def setup_tokenizers(self, snapshots: Mapping[str, TokenizerSnapshot] | None = None) -> None:
        """Load the tokenizers only (a worker that runs `prepare()`); those in `snapshots`
        (`tokenizer_snapshots()` of another process's pipeline) are built from them, without
        importing transformers. NER heads still load theirs (offsets and vocabulary through
        transformers), so a worker with one imports torch."""
        snapshots = snapshots or {}
        for key, tokenizer in self.tokenizers.items():
            if snapshots and key not in snapshots:
                log.warning("no tokenizer snapshot for %s: loading it here", tokenizer.model_dir)
            tokenizer.setup(snapshots.get(key))
        for ner in self.ner_tokenizers.values():
            ner.setup()

    def tokenizer_snapshots(self) -> dict[str, TokenizerSnapshot]:
        """The loaded tokenizers, for `setup_tokenizers` in worker processes (loaded here
        first when they are not yet)."""
        snapshots = {}
        for key, tokenizer in self.tokenizers.items():
            if not tokenizer.loaded:
                tokenizer.setup()
            snapshots[key] = tokenizer.snapshot()
        return snapshots

    def setup_models(self) -> None:
        """Load the models only (a worker that runs `infer()` and `finish()`)."""
        for model in self.models:
            model.setup()

    def start_tokenizer_pool(self, processes: int) -> None:
        """Run `prepare` in `processes` worker processes from now on, each with its own copy
        of the CPU stages (the executor decides how many; 0 keeps them in this process)."""
        if processes < 1 or self.tokenizer_pool is not None:
            return
        pool = TokenizerPool(
            Pipeline,
            self.absolute_config(),
            processes,
            self.config.prefetch_windows,
            self.tokenizer_snapshots(),
        )
        pool.start()
        self.tokenizer_pool = pool

    def teardown(self) -> None:
        for stage in self.stages:
            stage.teardown()
        if self.tokenizer_pool is not None:
            self.tokenizer_pool.close()
            self.tokenizer_pool = None
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

    @property
    def cpu_stages(self) -> list[Stage]:
        """The stages before the models: validate, then each tokenizer."""
        return [self.validate, *self.tokenize_stages]

    def prepare(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The CPU stages: validate the text, then tokenize it (token columns appended); in
        the tokenizer pool's processes when one is started, their counters added here."""
        if self.tokenizer_pool is None:
            return self.prepare_inline(batches)
        return self._prepare_in_pool(self.tokenizer_pool, batches)

    def prepare_inline(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The CPU stages in this thread."""
        stream_: Iterable[pa.RecordBatch] = batches
        for stage in self.cpu_stages:
            stream_ = stage(stream_)
        return iter(stream_)

    def _prepare_in_pool(
        self, pool: TokenizerPool, batches: Iterable[pa.RecordBatch]
    ) -> Iterator[pa.RecordBatch]:
        stages, tokenizers = self.cpu_stages, self.tokenize_stages
        for window in pool.map(batches, self.prepare_inline):
            if window.counters is not None:  # counted in a worker: add it here
                for stage, counters in zip(stages, window.counters, strict=True):
                    stage.counters.add(counters)
            if window.truncated_rows is not None:
                for tokenizer, truncated in zip(tokenizers, window.truncated_rows, strict=True):
                    tokenizer.truncated_rows += truncated
            yield window.batch

    def infer(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The model stages, on prepared batches; then `finish` each batch. After each window
        the heap's free pages go back to the OS once enough rows or bytes have passed since
        the last trim (`HeapTrim`: work done, not time; only where the mmap threshold is
        pinned)."""
        stream_: Iterable[pa.RecordBatch] = batches
        for stage in self.models:
            stream_ = stage(stream_)
        for batch in stream_:
            self.heap_trim.after_window(batch.num_rows, batch.nbytes)
            yield self.finish(batch)

    def finish(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Drop the internal columns (tokens, stats, embeddings only zero-shot heads read),
        add the `--token-stats` columns (from the first model's tokenizer) and move
        `enrich_error` to the end, after the model outputs."""
        error_column = self.validate.error_column
        keep = [
            name
            for name in batch.schema.names
            if not name.startswith(STAGE_PREFIXES) and name != error_column
        ]
        out = batch.select(keep)
        if len(self.tokenize_stages) > 1:  # a row one tokenizer finds no tokens in: no outputs
            out = _null_where(out, batch.column(error_column).is_valid(), self._output_names)
        if self.config.token_stats:
            stats = batch.column(self.stats_column)
            for field, column in zip(
                token_stats_fields(self.config.prefix), stats.flatten(), strict=True
            ):
                out = out.append_column(field, column)
        out = out.append_column(error_field(self.config.prefix), batch.column(error_column))
        if not self.config.emits_windows:
            return out
        assert self.embed is not None  # the config allows --emit windows with it alone
        spans = self.embed.tokens_column.replace(TOKENS_PREFIX, SPANS_PREFIX, 1)
        return window_rows(
            out,
            self.config.prefix,
            batch.column(spans),
            batch.column(self.embed.window_outputs_column),
            self._keeps_row_embedding,
        )

    @property
    def _output_names(self) -> list[str]:
        """The models' written output columns."""
        return [
            f.name
            for model in self.models
            for f in model.fields()
            if not f.name.startswith(INTERNAL_PREFIX)
        ]

    @property
    def stats_column(self) -> str:
        """The stats of the first model's tokenizer: the one `--token-stats` reports."""
        return self._first_encoder.tokens_column.replace(TOKENS_PREFIX, STATS_PREFIX, 1)

    @property
    def _first_model(self) -> EncoderStage | NerStage:
        """The first model stage (a zero-shot head comes after its encoder)."""
        first = self.models[0]
        assert isinstance(first, EncoderStage | NerStage)
        return first

    @property
    def _first_encoder(self) -> EncoderStage:
        """The first model stage: an encoder (a zero-shot head comes after its encoder)."""
        first = self.models[0]
        assert isinstance(first, EncoderStage)
        return first

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
        target: Path | Location,
        schema: pa.Schema,
        row_groups: list[int] | tuple[int, ...] | None = None,
        reuse: ReuseIndex | None = None,
        on_batch: Callable[[pa.RecordBatch], None] | None = None,
        sink_factory: SinkFactory = ParquetSink,
    ) -> FileResult:
        """Enrich one file (or some of its row groups) into `target`, atomically, through the
        sink `sink_factory` makes for it (`write_output`).

        Rows whose text is in `reuse` take their earlier outputs instead of the models.
        `on_batch` sees each output batch before it is written. Read failures are recorded
        in the result, not raised.
        """
        started = time.perf_counter()
        result = FileResult(file.path, str(target))
        output = self.output_schema(schema)
        sink = sink_factory(target, output)
        output_counts = OutputCounts.of(
            output, error_field(self.config.prefix).name, self.label_columns()
        )
        counts: dict[str, int] = {}
        batches = stream(
            file, self.config.window_rows, list(row_groups) if row_groups is not None else None
        )
        read = [0]
        if self.config.emits_windows:  # rows out are windows: count the rows in apart
            batches = _counted(batches, read)
        if reuse is None:
            enriched = self.transform(batches)
        else:
            enriched = transform_with_reuse(
                self.transform, batches, reuse, self.config.text_column, output, counts
            )
        if self.config.write_behind_windows:  # the models run ahead; this thread writes
            enriched = prefetch(enriched, self.config.write_behind_windows)
        truncated_before = self.truncated_rows
        tokens_before, seconds_before = self.model_work()
        try:
            write_output(enriched, sink, output_counts, result, on_batch)
        except InputError as e:
            result.error, result.dest, result.retryable = str(e), None, is_transient(e)
        except pa.ArrowInvalid as e:  # data Arrow refused (checked rows aside): this file fails
            result.error, result.dest = f"{file.path}: {e}", None
        finally:  # stop the models' thread, when the writer stopped early
            close = getattr(enriched, "close", None)
            if close is not None:
                close()
        result.rows = sink.rows
        if self.config.emits_windows:
            result.rows_in = read[0]
        result.rows_reused = counts.get("reused", 0)
        result.rows_truncated = self.truncated_rows - truncated_before
        tokens_after, seconds_after = self.model_work()
        result.tokens = tokens_after - tokens_before
        result.device_seconds = seconds_after - seconds_before
        result.seconds = time.perf_counter() - started
        return result

    def model_work(self) -> tuple[int, float]:
        """The real tokens the model stages saw so far and the seconds they ran (on the
        device: GPU or CPU), from their counters; a file's share is the difference."""
        return (
            sum(model.counters.real_tokens for model in self.models),
            sum(model.counters.seconds for model in self.models),
        )

    @property
    def truncated_rows(self) -> int:
        """Rows so far whose text the model did not see whole (by the first model's
        tokenizer, the one `--token-stats` reports)."""
        first = self._first_model.tokens_column
        return next(t.truncated_rows for t in self.tokenize_stages if t.tokens_column == first)

    def label_columns(self) -> list[str]:
        """The added single-label columns, one per head (`label`, `NAME_label`, after the
        prefix), whose counts reports and manifests keep."""
        labels = {
            head_prefix(self.config.prefix, head.name) + LABEL for head in self.config.heads()
        }
        return [f.name for f in self.added_fields() if f.name in labels]

    def collect(self, report: EnrichReport) -> None:
        """Add this pipeline's counters (stages, OOM splits) to `report`."""
        for stage in self.stages:
            report.stages.setdefault(stage.name, StageCounters()).add(stage.counters)
        for model in self.models:
            report.oom_splits += getattr(model, "oom_splits", 0)


def _counted(batches: Iterable[pa.RecordBatch], total: list[int]) -> Iterator[pa.RecordBatch]:
    """`batches`, their rows added up in `total[0]` as they pass."""
    for batch in batches:
        total[0] += batch.num_rows
        yield batch


def _null_where(batch: pa.RecordBatch, mask: pa.Array, names: list[str]) -> pa.RecordBatch:
    """`batch` with the `names` columns null in the rows where `mask` is true."""
    if not pc.any(mask).as_py():
        return batch
    for name in names:
        index = batch.schema.get_field_index(name)
        column = batch.column(index)
        batch = batch.set_column(
            index, batch.schema.field(index), pc.if_else(mask, pa.scalar(None, column.type), column)
        )
    return batch
