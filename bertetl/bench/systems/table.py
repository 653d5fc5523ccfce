"""The systems bench's report as tables: the systems, the host path, the Parquet codecs."""

from __future__ import annotations

import io
from typing import Any

from bertetl.bench import st_onnx

#: Columns of each table `format_table` prints: (title, key in the result rows).
SYSTEM_COLUMNS = [
    ("model", "model"),
    ("inputs", "inputs"),
    ("system", "system"),
    ("rows/s", "rows_per_s"),
    ("tokens/s", "tokens_per_s"),
    ("pad waste", "padding_waste"),
    ("x pipeline", "x_pipeline"),
    ("x s-t", "x_sentence-transformers"),
    ("x s-t int8", f"x_{st_onnx.SYSTEM}"),
    ("e2e/model", "share_of_model_only"),
    ("x embed-only", "x_embed_only"),
    ("entities", "entities"),
    ("agree", "rows_agree"),
    ("score diff", "score_max_diff"),
    ("cos fp32", "cosine_mean"),
    ("cos min", "cosine_min"),
    ("= fp32", "label_agreement"),
    ("peak RSS MB", "peak_rss_mb"),
    ("peak GPU MB", "peak_gpu_mb"),
    ("MFU", "mfu"),
]
HOST_COLUMNS = [
    ("model", "model"),
    ("inputs", "inputs"),
    ("cores", "cores"),
    ("codec", "compression"),
    ("rows/s", "rows_per_s"),
    ("tokens/s", "tokens_per_s"),
    ("tokenizers", "tokenizers"),
    ("x first", "x_first_cores"),
    ("tok. alone rows/s", "tokenizer_rows_per_s"),
    ("tok. alone x first", "tokenizer_x_first_cores"),
    ("x tokenizers", "x_first_tokenizers"),
    ("read s", "stage_seconds.read"),
    ("validate s", "stage_seconds.validate"),
    ("tokenize s", "stage_seconds.tokenize"),
    ("infer s", "stage_seconds.infer"),
    ("write s", "stage_seconds.write"),
    ("wall s", "median_s"),
    ("cores for H100", "cores_to_feed_h100"),
]
CODEC_COLUMNS = [
    ("model", "model"),
    ("inputs", "inputs"),
    ("codec", "compression"),
    ("write s", "write_s"),
    ("write rows/s", "write_rows_per_s"),
    ("read s", "read_s"),
    ("file MB", "file_mb"),
    ("embedding B/row", "embedding_bytes_per_row"),
    ("real sample B/row", "sample_real_bytes_per_row"),
    ("null sample B/row", "sample_null_bytes_per_row"),
]
LEFT = {"model", "inputs", "system", "codec"}
PERCENT = {"padding_waste", "mfu", "rows_agree", "label_agreement"}
#: Columns shown in scientific notation (score differences: 1e-6 is not 0.00), or with three
#: decimals (a head's cost, near 1.0), or four (a cosine to fp32).
SCIENTIFIC = {"score_max_diff"}
THREE_DECIMALS = {"x_embed_only"}
FOUR_DECIMALS = {"cosine_mean", "cosine_min"}
#: Columns of the variants' agreement with fp32 torch (`variant_agreement`), whose keys in
#: a result start with int8_ (quantized) or onnx_ (fp32 ONNX).
AGREEMENT_KEYS = {"cosine_mean", "cosine_min", "label_agreement"}
#: Columns of the heads' systems, the variants and sentence-transformers' ONNX int8, printed
#: only when some row has them.
HEAD_KEYS = {
    "x_embed_only",
    "entities",
    "rows_agree",
    "score_max_diff",
    f"x_{st_onnx.SYSTEM}",
    *AGREEMENT_KEYS,
}


def _value(row: dict[str, Any], key: str) -> Any:
    if key in AGREEMENT_KEYS:
        return next((row[f"{p}_{key}"] for p in ("int8", "onnx") if f"{p}_{key}" in row), None)
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(row: dict[str, Any], key: str) -> str:
    value = _value(row, key)
    if isinstance(value, float):
        if key in PERCENT:
            value = f"{value:.1%}"
        elif key in SCIENTIFIC:
            value = f"{value:.1e}"
        elif key in FOUR_DECIMALS:
            value = f"{value:.4f}"
        else:
            value = f"{value:,.3f}" if key in THREE_DECIMALS else f"{value:,.2f}"
    return "" if value is None else str(value)


def _table(title: str, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for heading, _ in columns:
        table.add_column(heading, justify="left" if heading in LEFT else "right")
    for row in rows:
        table.add_row(*(_cell(row, key) for _, key in columns))
    return table


def format_table(report: dict[str, Any]) -> str:
    """Readable tables of the results: the systems, the host path, the Parquet codecs."""
    from rich.console import Console

    device = report["environment"]["device"]
    systems = [r for r in report["results"] if r["system"] != "host"]
    host = [r for r in report["results"] if r["system"] == "host"]
    console = Console(width=200, record=True, file=io.StringIO())
    if systems or not host:
        columns = [
            (title, key)
            for title, key in SYSTEM_COLUMNS
            if key not in HEAD_KEYS or any(_value(row, key) is not None for row in systems)
        ]
        console.print(_table(f"bertetl bench on {device}", columns, systems))
    if host:
        title = f"host path (null model) on {device}: seconds per run, by stage"
        console.print(_table(title, HOST_COLUMNS, host))
    if report.get("codecs"):
        title = "Parquet codecs on the host path's output (one thread)"
        console.print(_table(title, CODEC_COLUMNS, report["codecs"]))
    for error in report["errors"]:
        console.print(f"error: {error}")
    return console.export_text()
