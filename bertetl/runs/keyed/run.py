"""Run a keyed plan: infer the distinct new texts once, then write every row from the outputs
DEST holds and those just inferred, and commit.

- A folder or prefix DEST: each changed input file's output is rewritten whole through the
  destination's sink (the old file or the whole new one), outputs of removed inputs are
  deleted, and the keyed record is written last (`_bertetl_keyed.json`). A kill leaves each
  output whole and the old record; the rerun rewrites what differs from its inputs, so
  nothing is lost or doubled once it finishes.
- A table DEST: the changed rows are staged and merged with the deletes in ONE commit that
  carries the record (`Destination.merge_keyed`); nothing changed, no commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertetl.errors import CommitError
from bertetl.executors import Executor, Job
from bertetl.io.destinations import Destination
from bertetl.io.keys import FINGERPRINT_TYPE, KeyedRecord
from bertetl.io.read import discover, open_parquet
from bertetl.results import EnrichReport
from bertetl.runs.keyed.outputs import OutputIndex
from bertetl.runs.keyed.plan import (
    FilePlan,
    KeyedPlan,
    batches_with_fingerprints,
    carried_columns,
    changed_rows,
    key_types_of,
)
from bertetl.schema import output_schema

BATCH_ROWS = 16384


def infer(plan: KeyedPlan, executor: Executor, scratch: Path, report: EnrichReport) -> Path | None:
    """Run the models over the distinct new texts (`plan.to_infer`); their outputs' file."""
    if plan.to_infer is None:
        return None
    (file,) = discover(plan.to_infer)
    target = scratch / "inferred.parquet"
    executor.setup()
    try:
        if plan.embedding_ranges:  # int8/uint8: the ranges DEST's rows were quantized with
            executor.pipeline.use_embedding_ranges(plan.embedding_ranges)
        schema = executor.pipeline.check_file(file)
        results = executor.run_jobs([Job(file, target, schema)], scratch=scratch)
        executor.collect(report)
        plan.embedding_ranges = executor.pipeline.embedding_ranges() or plan.embedding_ranges
    finally:
        executor.teardown()
    (result,) = results
    if result.error is not None:
        raise CommitError(
            f"the model run over {plan.total('inferred'):,} new texts failed: {result.error}"
        )
    report.files.extend(results)
    return target


def _reusable(
    plan: KeyedPlan, dest: Destination, added: list[pa.Field]
) -> Iterator[pa.RecordBatch]:
    """DEST's rows that enriched without error, their fingerprint and added columns."""
    if not plan.reuse:
        return
    from bertetl.io.keys import text_fingerprints

    names = [f.name for f in added]
    wanted = [plan.fingerprint_column, plan.text_column, *names]
    if dest.capabilities.files:
        sources = []
        for output in dest.existing_outputs():
            try:
                parquet = open_parquet(output)
            except (pa.ArrowException, OSError):
                continue
            present = [n for n in wanted if n in parquet.schema_arrow.names]
            sources.append(parquet.iter_batches(columns=present, batch_size=BATCH_ROWS))
        batches: Any = (b for source in sources for b in source)
    else:
        batches = dest.keyed_rows(plan.options.key, wanted)
    error = plan.error_column
    for batch in batches:
        if any(n not in batch.schema.names for n in names):
            continue  # other added columns: nothing in it can be reused
        if plan.fingerprint_column not in batch.schema.names:
            if plan.text_column not in batch.schema.names:
                continue
            fps = text_fingerprints(batch.column(plan.text_column))
            batch = batch.append_column(plan.fingerprint_column, fps)
        yield batch.filter(pc.is_null(batch.column(error)))


def build_index(
    plan: KeyedPlan, dest: Destination, added: list[pa.Field], inferred: Path | None, scratch: Path
) -> OutputIndex:
    """The outputs every written row takes, by fingerprint: DEST's, then this run's."""
    index = OutputIndex(scratch / "outputs.arrow", plan.fingerprint_column, added)
    index.add(_reusable(plan, dest, added))
    if inferred is not None:
        index.add(pq.ParquetFile(inferred).iter_batches(batch_size=BATCH_ROWS))
    return index.seal()


def _rows_of(
    batch: pa.RecordBatch, fps: pa.Array, index: OutputIndex, carried: list[str], schema: pa.Schema
) -> pa.RecordBatch:
    """Output rows for `batch`: its carried columns, fingerprint and outputs."""
    rows = index.find(fps)
    if (rows < 0).any():
        missing = int((rows < 0).sum())
        raise CommitError(f"{missing:,} row(s) have no outputs to write (an inference was lost)")
    outputs = index.take(rows)
    arrays = [batch.column(name) for name in carried]
    arrays += [fps, *(column.combine_chunks() for column in outputs.columns)]
    return pa.RecordBatch.from_arrays(
        [a.cast(f.type) for a, f in zip(arrays, schema, strict=True)], schema=schema
    )


class Assembly:
    """Writes output rows for a plan, and counts what it wrote."""

    def __init__(
        self, plan: KeyedPlan, dest: Destination, index: OutputIndex, added: list[pa.Field]
    ) -> None:
        self.plan, self.dest, self.index, self.added = plan, dest, index, added
        self.failed = 0
        self.written = 0

    def schema_for(self, file_schema: pa.Schema) -> tuple[list[str], pa.Schema]:
        carried = carried_columns(file_schema, self.plan.options, self.plan.text_column)
        fields = [file_schema.field(name) for name in carried]
        fields = [
            pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f
            for f in fields
        ]
        inputs = pa.schema([*fields, pa.field(self.plan.fingerprint_column, FINGERPRINT_TYPE)])
        return carried, output_schema(inputs, self.added)

    def batches(
        self, item: FilePlan, file_schema: pa.Schema, only_changed: bool
    ) -> Iterator[pa.RecordBatch]:
        """The output rows of one input file (`only_changed`: a table's changed rows)."""
        carried, schema = self.schema_for(file_schema)
        plan = self.plan
        key = list(plan.options.key)
        key_types = key_types_of([file_schema], key)
        compare = None
        if only_changed and plan.reuse:
            compare = carried_columns(file_schema, plan.options, plan.text_column)
            compare = compare if plan.options.output_columns == "all" else None
        for batch, fps in batches_with_fingerprints(item.file, plan.text_column, BATCH_ROWS):
            if only_changed and plan.reuse:
                need = changed_rows(batch, fps, plan.dest_rows, key, key_types, compare)
                mask = pa.array(need.to_list())
                batch, fps = batch.filter(mask), fps.filter(mask)
                if not batch.num_rows:
                    continue
            out = _rows_of(batch, fps, self.index, carried, schema)
            self.failed += out.num_rows - out.column(plan.error_column).null_count
            self.written += out.num_rows
            yield out


def write_file(assembly: Assembly, item: FilePlan, file_schema: pa.Schema) -> None:
    """Rewrite one input file's output whole (with `--keep-deleted`, also its earlier rows
    whose keys SOURCE no longer has)."""
    dest, plan = assembly.dest, assembly.plan
    _, schema = assembly.schema_for(file_schema)
    sink = dest.sink(item.target, schema)
    sink.open()
    try:
        for batch in assembly.batches(item, file_schema, only_changed=False):
            sink.write(batch)
        if plan.options.keep_deleted:
            for batch in kept_rows(plan, item.target, schema):
                sink.write(batch)
        sink.commit()
    except BaseException:
        sink.abort()
        raise


def kept_rows(plan: KeyedPlan, target: Any, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The rows of an earlier output at `target` whose keys SOURCE no longer has anywhere."""
    import polars as pl

    try:
        parquet = open_parquet(target)
    except (pa.ArrowException, OSError):
        return
    key = list(plan.options.key)
    alive = plan.source_keys
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        if any(name not in batch.schema.names for name in schema.names):
            continue
        frame = pl.from_arrow(pa.table({name: batch.column(name) for name in key}))
        assert isinstance(frame, pl.DataFrame)
        frame = frame.cast({name: alive.schema[name] for name in key})
        gone = frame.with_row_index("__i").join(alive, on=key, how="anti").get_column("__i")
        if len(gone):
            yield batch.take(pa.array(gone.to_numpy())).select(schema.names).cast(schema)


def commit_files(plan: KeyedPlan, assembly: Assembly, schemas: dict[str, pa.Schema]) -> None:
    """A folder or prefix DEST: changed outputs rewritten one by one, orphans removed or
    rewritten, then the record."""
    dest = assembly.dest
    for item in plan.files:
        if item.write:
            write_file(assembly, item, schemas[item.file.path])
    for target in plan.orphan_rewrites:
        parquet = open_parquet(target)
        schema = parquet.schema_arrow
        sink = dest.sink(target, schema)
        sink.open()
        try:
            rows = 0
            for batch in kept_rows(plan, target, schema):
                sink.write(batch)
                rows += batch.num_rows
            if rows:
                sink.commit()
            else:
                sink.abort()
                plan.orphans.append(target)
        except BaseException:
            sink.abort()
            raise
    if plan.orphans:
        dest.remove_outputs(plan.orphans)


def commit_table(
    plan: KeyedPlan,
    assembly: Assembly,
    schemas: dict[str, pa.Schema],
    staged: Path,
    record: Callable[[], str],
) -> bool:
    """A table DEST: the changed rows staged, then merged with the deletes in one commit."""
    files: list[Path] = []
    for number, item in enumerate(plan.files):
        if not item.written:
            continue
        _, schema = assembly.schema_for(schemas[item.file.path])
        path = staged / f"upsert-{number:05d}.parquet"
        with pq.ParquetWriter(path, schema) as writer:
            for batch in assembly.batches(item, schemas[item.file.path], only_changed=True):
                writer.write_batch(batch)
        files.append(path)
    deletes = plan.deletes.to_arrow() if plan.deletes.height else None
    if not files and deletes is None:
        return False
    return bool(assembly.dest.merge_keyed(files, deletes, list(plan.options.key), record()))


def make_record(plan: KeyedPlan, counts: dict[str, int], model_seconds: float) -> KeyedRecord:
    return KeyedRecord(
        key=list(plan.options.key),
        output_columns=plan.options.output_columns,
        config_hash=plan.config_hash,
        models=plan.models,
        inputs=[item.fingerprint for item in plan.files],
        outputs={item.fingerprint.relative: item.output for item in plan.files},
        counts=counts,
        model_seconds=round(model_seconds, 3),
        embedding_ranges=plan.embedding_ranges,
        finished=datetime.now(UTC).isoformat(),
    )
