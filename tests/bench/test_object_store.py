"""`bertetl bench --inputs s3://...`: own texts read from a real S3-compatible server (moto on
loopback) are the texts of the same local table; a missing bucket is one error before any
system runs."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from bertetl.bench.systems import BenchConfig, check_inputs, input_texts, own_input
from bertetl.cli.app import app
from bertetl.errors import InputError
from bertetl.io.stores.locations import parse_location


def test_own_inputs_from_s3_equal_local(
    write_table, tmp_path: Path, bucket: str, storage: dict[str, str]
) -> None:
    write_table({"body": ["one", "two", None, " "]}, "texts/a.parquet")
    write_table({"body": ["three"]}, "texts/b.parquet")
    target = parse_location(f"s3://{bucket}/texts", storage)
    pafs.copy_files(
        str(tmp_path / "texts"),
        target.path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=target.fs,
    )
    assert own_input(f"s3://{bucket}/texts:body") == (f"s3://{bucket}/texts", "body")
    assert own_input(f"s3://{bucket}/texts/a.parquet") == (f"s3://{bucket}/texts/a.parquet", "text")
    local = input_texts(f"{tmp_path / 'texts'}:body", 7)
    assert local == ["one", "two", "three", "one", "two", "three", "one"]
    assert input_texts(f"s3://{bucket}/texts:body", 7, storage) == local
    assert input_texts(f"s3://{bucket}/texts/b.parquet:body", 2, storage) == ["three"] * 2
    check_inputs(
        BenchConfig(inputs=["reviews", f"s3://{bucket}/texts:body"], storage_options=storage)
    )
    with pytest.raises(InputError, match=f"s3://{bucket}/gone does not exist"):
        check_inputs(BenchConfig(inputs=[f"s3://{bucket}/gone"], storage_options=storage))
    with pytest.raises(InputError, match="--storage-option is for an s3://"):
        check_inputs(BenchConfig(inputs=["reviews"], storage_options=storage))
    with pytest.raises(InputError, match="unknown input set 'nonsense'"):
        check_inputs(BenchConfig(inputs=["nonsense"]))
    assert "storage_options" not in BenchConfig(storage_options=storage).model_dump()


def test_cli_missing_bucket_is_one_line(tmp_path: Path, storage: dict[str, str]) -> None:
    missing = "s3://no-such-bucket-here/texts"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "systems",
            "--inputs",
            missing,
            "--models",
            "minilm",
            "--out",
            str(tmp_path / "bench.json"),
            "--storage-option",
            f"endpoint_url={storage['endpoint_url']}",
        ],
    )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0] and "does not exist" in lines[0]
    assert not (tmp_path / "bench.json").exists()
