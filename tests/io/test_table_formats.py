"""The table-format registry is the one place that names the formats: every registered format
parses its own addresses and names its own extra, a scheme left out of the registry is no
table to the storage parser, a new format is one class and one registry line, and no module
outside `bertetl/io/tables/` names a format's class or branches on a format's scheme."""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bertetl.io.stores.locations import (
    StorageError,
    TableRef,
    is_table_uri,
    parse_table,
    resolve,
    resolve_run,
    table_uri_parts,
)
from bertetl.io.tables import (
    TableCommit,
    TableFormat,
    TablePartition,
    commit_partition,
    commit_records,
    count_commits,
    lock_place,
    open_table,
    read_partition,
)
from bertetl.io.tables.registry import FORMATS, format_class

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "bertetl" / "io" / "tables"
SCHEMES = sorted(FORMATS)


def protocol_members() -> set[str]:
    """What every `TableFormat` has: its class attributes and its methods."""
    names = [*vars(TableFormat), *TableFormat.__annotations__]
    return {name for name in names if not name.startswith("_")}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_registered_format_parses_its_own_addresses(scheme: str) -> None:
    cls = format_class(scheme)
    assert protocol_members() <= set(dir(cls))
    assert cls.examples
    for example in cls.examples:
        assert table_uri_parts(example)[0] == scheme
        assert is_table_uri(example)
        assert is_table_uri(example.replace(scheme, scheme.upper(), 1))
        ref = parse_table(example + "/")
        assert (ref.format, ref.uri, str(ref)) == (scheme, example, example)
        assert parse_table(str(ref)) == ref
        assert resolve(example) == ref
        assert ref.local == cls.is_local(ref.address)
    with pytest.raises(StorageError):
        parse_table(f"{scheme}://")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_missing_package_names_the_extra_of_its_format(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = format_class(scheme)
    monkeypatch.setitem(sys.modules, cls.package, None)
    with pytest.raises(StorageError, match=rf"needs {cls.package}: .*'bertetl\[{cls.extra}\]'"):
        open_table(parse_table(cls.examples[0]))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_scheme_missing_from_the_registry_is_no_table(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = format_class(scheme).examples
    monkeypatch.delitem(FORMATS, scheme)
    for example in examples:
        assert not is_table_uri(example)
        with pytest.raises(StorageError, match="expected a table URI"):
            parse_table(example)
        try:
            resolved = resolve(example)
        except StorageError:  # an object store of that scheme, which there is not
            resolved = None
        assert not isinstance(resolved, TableRef)
    for other in set(SCHEMES) - {scheme}:  # the others are untouched
        assert parse_table(format_class(other).examples[0]).format == other


class ToyFormat:
    """A table format held in memory: what a new format needs to be, and no more."""

    extra: ClassVar[str] = "toy"
    package: ClassVar[str] = "toy_tables"
    examples: ClassVar[tuple[str, ...]] = ("toy://shelf/t",)
    #: address -> commits, oldest first: (the table's rows, manifest JSON)
    tables: ClassVar[dict[str, list[tuple[pa.Table, str]]]] = {}

    @classmethod
    def parse(cls, text: str, options: tuple[tuple[str, str], ...]) -> TableRef:
        scheme, rest = table_uri_parts(text)
        if "/" not in rest:
            raise StorageError(f"{text}: expected toy://SHELF/TABLE")
        return TableRef(scheme, f"{scheme}://{rest}", rest, options)

    @classmethod
    def is_local(cls, address: str) -> bool:
        return address.startswith("shelf/")

    def __init__(self, ref: TableRef) -> None:
        self.ref = ref
        self.commits = self.tables.setdefault(ref.address, [])

    def check(self) -> None:
        pass

    def pin(self) -> int | None:
        return len(self.commits) - 1

    def schema(self, version: int | None) -> pa.Schema:
        return self.commits[-1 if version is None else version][0].schema

    def partitions(self, column: str, version: int | None) -> list[TablePartition]:
        raise NotImplementedError

    def batches(
        self, column: str, value: str, version: int | None, columns: list[str] | None
    ) -> pa.RecordBatchReader:
        rows = self.commits[-1 if version is None else version][0]
        rows = rows.filter(pc.equal(rows[column], value)).select(columns or rows.schema)
        return pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches())

    def all_batches(self, version: int | None) -> pa.RecordBatchReader:
        raise NotImplementedError

    def partition_columns(self) -> list[str]:
        return []

    def field_type(self, column: str) -> pa.DataType | None:
        return None

    def commit(
        self, column: str, value: str, reader: pa.RecordBatchReader, manifest_json: str
    ) -> None:
        new = reader.read_all()
        if self.commits:
            old = self.commits[-1][0]
            new = pa.concat_tables([old.filter(pc.not_equal(old[column], value)), new])
        self.commits.append((new, manifest_json))

    def replace_all(
        self, schema: pa.Schema, batches: Iterator[pa.RecordBatch], record: str
    ) -> None:
        raise NotImplementedError

    def records(self, column: str) -> list[tuple[int, str]]:
        return [(i, text) for i, (_, text) in reversed(list(enumerate(self.commits)))]

    def merge_keyed(
        self,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        deletes: pa.Table | None,
        key: list[str],
        record: str,
    ) -> None:
        raise NotImplementedError  # a format may refuse keyed runs

    def keyed_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        if self.commits:
            table = self.commits[-1][0]
            yield from table.select([c for c in columns if c in table.column_names]).to_batches()

    def last_record(self) -> str | None:
        return self.commits[-1][1] if self.commits else None

    def commit_problem(self, commit: TableCommit, rows: int) -> str | None:
        return None

    def lock_place(self) -> Path:
        return Path("/locks") / self.ref.address

    def count_commits(self) -> int:
        return len(self.commits)

    def holds_rows(self) -> bool:
        return bool(self.commits)


def test_a_new_format_is_one_class_and_one_registry_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert protocol_members() <= set(dir(ToyFormat))
    monkeypatch.setitem(FORMATS, "toy", f"{__name__}:ToyFormat")
    monkeypatch.setattr(ToyFormat, "tables", {})

    ref = parse_table("toy://shelf/t", {"region": "x"})
    assert (ref.format, ref.address, ref.options, ref.local) == (
        "toy",
        "shelf/t",
        (("region", "x"),),
        True,
    )
    assert not parse_table("toy://attic/t").local
    with pytest.raises(StorageError, match="expected toy://SHELF/TABLE"):
        parse_table("toy://t")
    source, dest = resolve_run(str(tmp_path), "toy://shelf/t")
    assert (source, dest) == (str(tmp_path), parse_table("toy://shelf/t"))
    assert lock_place(dest) == Path("/locks/shelf/t")

    # the shared code commits through it: the partition column added, the manifest carried
    for value, ids in (("d1", [1, 2]), ("d2", [3]), ("d1", [4])):
        staged = tmp_path / f"{value}-{len(ids)}.parquet"
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), staged)
        manifest = {"partition_column": "date", "partition": value, "rows_out": len(ids)}
        commit_partition(dest, "date", value, [staged], json.dumps(manifest))
    assert count_commits(dest) == 3
    records = commit_records(dest, "date")
    assert {
        v: (c.commit_id, json.loads(c.manifest_json)["rows_out"]) for v, c in records.items()
    } == {
        "d1": (2, 1),
        "d2": (1, 1),
    }
    assert read_partition(dest, "date", "d1", ["id", "date", "absent"]).to_pydict() == {
        "id": [4],
        "date": ["d1"],
    }

    monkeypatch.delitem(FORMATS, "toy")
    assert not is_table_uri("toy://shelf/t")


def offences(source: str, where: str) -> list[str]:
    """Where `source` names a format's class or module, or compares with a format's scheme
    (tests may: they check a format's own behaviour)."""
    classes = {target.split(":")[1] for target in FORMATS.values()} | {"_Delta", "_Iceberg"}
    modules = {target.split(":")[0] for target in FORMATS.values()}
    found = []
    for node in ast.walk(ast.parse(source)):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Name) and node.id in classes:
            found.append(f"{line} names {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in classes:
            found.append(f"{line} names {node.attr}")
        elif isinstance(node, ast.ImportFrom) and (
            node.module in modules
            or any(f"{node.module}.{a.name}" in modules or a.name in classes for a in node.names)
        ):
            found.append(f"{line} imports a format's module")
        elif isinstance(node, ast.Import) and {a.name for a in node.names} & modules:
            found.append(f"{line} imports a format's module")
        elif (
            isinstance(node, ast.Compare)
            and not where.startswith("tests")
            and any(
                isinstance(n, ast.Constant) and n.value in FORMATS
                for n in (node.left, *node.comparators)
            )
        ):
            found.append(f"{line} compares with a format's scheme")
    return found


def test_no_module_outside_the_package_names_a_format_or_branches_on_one() -> None:
    found = []
    for folder in ("bertetl", "flows", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if not path.is_relative_to(PACKAGE):
                text = path.read_text(encoding="utf-8")
                found += offences(text, str(path.relative_to(REPO)))
    assert not found, "\n".join(found)


def test_the_scan_finds_each_kind_of_offence() -> None:
    offender = (
        "import bertetl.io.tables.delta\n"
        "from bertetl.io.tables.iceberg import IcebergFormat\n"
        "from bertetl.io.tables import delta, _Iceberg\n"
        'if ref.format == "delta" or "iceberg" != ref.format:\n'
        "    table = tables._Delta(ref)\n"
        "if isinstance(table, DeltaFormat):\n"
        "    pass\n"
    )
    assert sorted(line.split(" ", 1)[0] for line in offences(offender, "bertetl/x.py")) == [
        "bertetl/x.py:1",
        "bertetl/x.py:2",
        "bertetl/x.py:3",
        "bertetl/x.py:4",
        "bertetl/x.py:4",
        "bertetl/x.py:5",
        "bertetl/x.py:6",
    ]
    assert not [o for o in offences(offender, "tests/x.py") if "compares" in o]
