"""`bertetl.io.stores.locations`: what a user's SOURCE or DEST text becomes (`parse_location`), the
path arithmetic of a `Location`, and `--storage-option` parsing and checking.

References: `posixpath` and `pathlib` for the arithmetic, `urllib.parse.urlsplit` for
endpoints, `os`/`boto3` for what a location reads. Building an S3 location makes no request,
so only the tests that read through a store use the session's S3 server (moto on loopback).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pyarrow.fs as pafs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bertetl.io.stores.locations import (
    Location,
    StorageError,
    as_local,
    filesystem_options,
    is_remote,
    is_uri,
    parse_location,
    parse_storage_options,
    resolve,
    resolve_run,
    storage_error,
)

#: Options that reach no server: building the filesystem sends nothing.
OFFLINE = {"endpoint_url": "http://127.0.0.1:9", "region": "us-east-1"}


@pytest.fixture(scope="module")
def prefix() -> Location:
    return parse_location("s3://bucket/lake/enriched/", OFFLINE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://bucket/key", True),
        ("gs://bucket", True),
        ("abfs://container/a/b", True),
        ("az://container/a", True),
        ("file:///tmp/x", False),  # file:// is local
        ("C://data/x", False),  # a one-letter scheme is a Windows drive
        ("relative/folder", False),
        ("/abs/folder", False),
        ("date=2026-11-01/part-0.parquet", False),
        (Path("s3:/not/a/uri"), False),  # an os.PathLike is a local path
    ],
)
def test_is_uri(text, expected) -> None:
    assert is_uri(text) is expected


def test_storage_option_pairs() -> None:
    assert parse_storage_options(None) == {}
    assert parse_storage_options([" region = eu-west-1 ", "sas_token=sv=2024&sig=a=b"]) == {
        "region": "eu-west-1",
        "sas_token": "sv=2024&sig=a=b",  # only the first `=` splits
    }
    assert parse_storage_options(["region=a", "region=b"]) == {"region": "b"}  # the last wins
    for bad in ["region", "=value", " =value"]:
        with pytest.raises(StorageError, match="expected KEY=VALUE"):
            parse_storage_options([bad])


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:9000", "https://minio.example.com:9443/", "http://h/sub/path/"]
)
def test_an_endpoint_url_is_split_into_scheme_and_host(endpoint: str) -> None:
    parts = urlsplit(endpoint)
    kwargs = filesystem_options("s3", {"endpoint_url": endpoint}, "s3://b/k")
    assert kwargs == {
        "scheme": parts.scheme,
        "endpoint_override": parts.netloc + parts.path.rstrip("/"),
    }
    assert filesystem_options("s3", {"endpoint_url": "localhost:9000"}, "s3://b/k") == {
        "endpoint_override": "localhost:9000"  # no scheme given, none set
    }


def test_option_aliases_and_types() -> None:
    kwargs = filesystem_options(
        "s3",
        {
            "aws_access_key_id": "AK",
            "aws_secret_access_key": "SK",
            "region_name": "eu-west-1",
            "anonymous": "Yes",
            "force_virtual_addressing": "0",
            "connect_timeout": "2.5",
        },
        "s3://b/k",
    )
    assert kwargs == {
        "access_key": "AK",
        "secret_key": "SK",
        "region": "eu-west-1",
        "anonymous": True,
        "force_virtual_addressing": False,
        "connect_timeout": 2.5,
    }
    assert filesystem_options("gcs", {"project_id": "p", "anonymous": "true"}, "gs://b") == {
        "project_id": "p",
        "anonymous": True,
    }
    with pytest.raises(StorageError, match="request_timeout=soon: expected a number"):
        filesystem_options("s3", {"request_timeout": "soon"}, "s3://b/k")
    with pytest.raises(StorageError, match=r"project_id is not an option of s3://b/k; known: "):
        filesystem_options("s3", {"project_id": "p"}, "s3://b/k")
    # a store read through fsspec (Azure: adlfs) takes its own keywords as they are
    azure = {"account_name": "acct", "connection_string": "UseDevelopmentStorage=true"}
    assert filesystem_options("azure", azure, "abfs://c/k") == azure


def test_a_local_path_is_a_local_location(tmp_path: Path) -> None:
    location = parse_location(tmp_path / "out")
    assert location.local and not is_remote(location)
    assert os.fspath(location) == location.path == str(tmp_path / "out") == location.uri
    assert (location / "date=1/part-0.parquet").path == str(tmp_path / "out/date=1/part-0.parquet")
    assert location.parent.path == str(tmp_path) and location.name == "out"
    assert as_local(location) == str(tmp_path / "out") and as_local(tmp_path) == str(tmp_path)
    assert parse_location(location) is location  # a Location is taken as it is
    with pytest.raises(StorageError, match="--storage-option is for object-store URIs"):
        parse_location(tmp_path, {"region": "eu-west-1"})


def test_a_store_uri_is_normalised(prefix: Location) -> None:
    assert not prefix.local and is_remote(prefix)
    assert (prefix.uri, prefix.path) == ("s3://bucket/lake/enriched", "bucket/lake/enriched")
    assert prefix.store == "s3"
    assert (prefix.bucket, prefix.key, prefix.name) == ("bucket", "lake/enriched", "enriched")
    assert prefix.options == tuple(sorted(OFFLINE.items()))
    shouted = parse_location("S3A://bucket/x//", OFFLINE)
    assert (shouted.uri, shouted.store, shouted.key) == ("s3a://bucket/x", "s3", "x")
    root = parse_location("gs://bucket", {"endpoint_url": "http://127.0.0.1:9", "anonymous": "1"})
    assert (root.store, root.bucket, root.key) == ("gcs", "bucket", "")
    for bad in ["s3://", "s3:///absolute/key"]:
        with pytest.raises(StorageError, match=r"expected s3://BUCKET/PATH"):
            parse_location(bad, OFFLINE)
    with pytest.raises(TypeError, match="s3://bucket/lake/enriched is not a local path"):
        os.fspath(prefix)
    with pytest.raises(StorageError, match="reads and writes local paths only"):
        as_local(prefix)


_segment = st.text(alphabet="abcxyz019-_.= %", min_size=1, max_size=8).filter(
    lambda s: s.strip(".") != ""  # `.` and `..` are not names
)


@given(relative=st.lists(_segment, min_size=1, max_size=4).map("/".join))
def test_store_path_arithmetic_matches_posixpath(prefix: Location, relative: str) -> None:
    below = prefix / relative
    assert below.path == posixpath.join(prefix.path, relative)
    assert below.uri == "s3://" + below.path and below.store == prefix.store
    assert below.options == prefix.options and below.fs is prefix.fs
    assert below.relative_to(prefix) == relative
    assert below.is_relative_to(prefix) and prefix.is_relative_to(prefix)
    assert not prefix.is_relative_to(below)
    assert below.parent.path == posixpath.dirname(below.path)
    assert below.name == posixpath.basename(below.path)


def test_a_sibling_with_a_longer_name_is_not_inside(prefix: Location) -> None:
    sibling = parse_location("s3://bucket/lake/enriched-old/x", OFFLINE)
    assert not sibling.is_relative_to(prefix)
    with pytest.raises(StorageError, match="is not inside s3://bucket/lake/enriched"):
        sibling.relative_to(prefix)
    other_store = parse_location("gs://bucket/lake/enriched/x", {"anonymous": "1"})
    assert not other_store.is_relative_to(prefix)


def test_resolve_keeps_local_paths_and_opens_uris(tmp_path: Path) -> None:
    assert resolve(str(tmp_path)) == str(tmp_path)  # as given: local code stays as it was
    assert resolve(tmp_path) == tmp_path
    opened = resolve("s3://bucket/in", OFFLINE)
    assert isinstance(opened, Location) and opened.uri == "s3://bucket/in"
    source, dest = resolve_run(tmp_path, "s3://bucket/out", OFFLINE)
    assert source == tmp_path and dest.uri == "s3://bucket/out"
    with pytest.raises(StorageError, match=r"local paths$"):
        resolve_run(tmp_path / "in", tmp_path / "out", {"region": "eu-west-1"})


def test_storage_error_names_the_uri_and_what_to_check() -> None:
    error = storage_error("gs://b/k", "cannot reach", OSError("timed out\nsecond line"))
    assert str(error).startswith("cannot reach gs://b/k: timed out; check the bucket, ")
    assert "Application Default Credentials" in str(error) and "second line" not in str(error)
    blank = storage_error("abfs://c/k", "cannot list", TimeoutError())
    assert str(blank).startswith("cannot list abfs://c/k: TimeoutError; ")
    assert "account_name" in str(blank)


def test_a_local_location_reads_what_os_sees(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "data.bin").write_bytes(b"\x00payload" * 100)
    folder = parse_location(str(tmp_path / "folder"))
    file = folder / "data.bin"
    assert folder.is_dir() and not folder.is_file() and folder.exists()
    assert file.is_file() and file.info().size == os.path.getsize(tmp_path / "folder/data.bin")
    assert file.read_bytes() == (tmp_path / "folder" / "data.bin").read_bytes()
    with file.open_input_file() as handle:
        handle.seek(1)
        assert handle.read(7) == b"payload"
    assert not (folder / "missing").exists()
    assert isinstance(folder.fs, pafs.LocalFileSystem)


def test_a_store_location_reads_what_boto3_wrote(s3_endpoint, bucket, storage) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="t/date=1/part-0.parquet", Body=b"PAR1 not really PAR1")
    table = parse_location(f"s3://{bucket}/t", storage)
    file = table / "date=1/part-0.parquet"
    assert table.is_dir() and (table / "date=1").is_dir() and not table.is_file()
    assert file.is_file() and file.read_bytes() == b"PAR1 not really PAR1"
    assert file.info().size == s3.head_object(Bucket=bucket, Key=file.key)["ContentLength"]
    with file.open_input_file() as handle:  # ranged reads
        handle.seek(5)
        assert handle.read(10) == b"not really"
    assert not (table / "date=2").exists()


def test_the_sdks_endpoint_variable_reaches_a_store_without_options(
    s3_endpoint, bucket, monkeypatch
) -> None:
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket, Key="k", Body=b"v")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    location = parse_location(f"s3://{bucket}/k")
    assert location.options == () and location.read_bytes() == b"v"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)  # the S3 one comes first
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert parse_location(f"s3://{bucket}/k").read_bytes() == b"v"
