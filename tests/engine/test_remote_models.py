"""Model folders on object storage: fetched once per machine through the run's storage
options, into a cache keyed by content, against the session's S3 server (moto on loopback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.engine.model_files import model_identity, resolve_model_dir
from bertetl.engine.remote_models import models_cache
from bertetl.errors import ModelError
from bertetl.io.manifest import model_fingerprint
from bertetl.io.stores.locations import StorageError
from bertetl.runs.enrich import enrich


def upload_folder(endpoint: str, bucket: str, folder: Path, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("BERTETL_CACHE", str(tmp_path / "cache"))
    return models_cache()


def test_fetched_once_into_a_content_keyed_cache(
    s3_endpoint: str, bucket: str, storage: dict, tiny_embed_dir: Path, cache: Path
) -> None:
    upload_folder(s3_endpoint, bucket, tiny_embed_dir, "models/tiny")
    uri = f"s3://{bucket}/models/tiny"
    local = resolve_model_dir(uri, storage_options=storage)
    assert local == cache / model_fingerprint(tiny_embed_dir)  # same files, same fingerprint
    assert model_identity(uri, storage_options=storage) == model_fingerprint(tiny_embed_dir)
    stamp = (local / "config.json").stat().st_mtime_ns
    assert resolve_model_dir(uri, storage_options=storage) == local
    assert (local / "config.json").stat().st_mtime_ns == stamp  # not fetched again


def test_a_run_reads_its_model_from_the_store(
    s3_endpoint: str, bucket: str, storage: dict, tiny_embed_dir: Path, cache: Path, tmp_path: Path
) -> None:
    upload_folder(s3_endpoint, bucket, tiny_embed_dir, "m")
    src = f"s3://{bucket}/src/part-0.parquet"
    import boto3

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["hello world", "a movie that was good"]}), sink)
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket=bucket, Key="src/part-0.parquet", Body=sink.getvalue().to_pybytes()
    )
    outputs = {}
    for name, model in (("remote", f"s3://{bucket}/m"), ("local", str(tiny_embed_dir))):
        config = EngineConfig(text_column="text", embed_model=model, device="cpu")
        dest = f"s3://{bucket}/out-{name}"
        enrich(src.rsplit("/", 1)[0], dest, config, storage_options=storage)
        client = boto3.client("s3", endpoint_url=s3_endpoint)
        body = client.get_object(Bucket=bucket, Key=f"out-{name}/part-0.parquet")["Body"].read()
        table = pq.read_table(pa.BufferReader(body))
        outputs[name] = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(outputs["remote"], outputs["local"])


def test_a_missing_folder_is_one_line(
    s3_endpoint: str, bucket: str, storage: dict, cache: Path
) -> None:
    with pytest.raises((ModelError, StorageError), match=f"s3://{bucket}/nothing") as raised:
        resolve_model_dir(f"s3://{bucket}/nothing", storage_options=storage)
    assert "\n" not in str(raised.value)
