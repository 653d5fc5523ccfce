"""Fine-tune a token classifier (NER) from a table of texts and character spans, with an
entity-level held-out evaluation (seqeval) in MODEL_OUT/eval/.

The table has a text column and a spans column, `list<struct<start, end, label>>` with
character offsets into the text (`bertetl.training.conll` builds one from CoNLL files). Labels
reach the tokens through the fast tokenizer's offsets, as BIO tags: a token that overlaps a
span is in it; the span's first such token is `B-LABEL`, the others `I-LABEL`; every other
content token is `O`; special tokens are left out of the loss (-100). Every subword is
labelled, so all of `simple`, `first`, `average` and `max` aggregation work at inference.

The held-out score is seqeval's entity-level precision, recall and F1 (its default,
conlleval-compatible mode) over the BIO tag sequences of the held-out rows' tokens (the
model's tokenizer, truncated at `max_length`): an entity counts when its type and its first
and last token both match. Per type, and micro / macro / weighted averages, in
`MODEL_OUT/eval/metrics.json` (seqeval's text report in `report.txt`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from bertetl.config import Device
from bertetl.engine.encoders import resolve_device
from bertetl.engine.model_files import max_length_for, resolve_model_dir
from bertetl.engine.tokenize import as_plain_text, text_problems
from bertetl.errors import InputError
from bertetl.io.inputs import resolve_inputs
from bertetl.io.read import (
    SourceFile,
    check_text_column,
    discover,
    read_columns,
    read_schema,
    require_column,
)
from bertetl.io.stores.locations import Location
from bertetl.training.train import EVAL_DIR, _batches, _save, check_model_out

log = logging.getLogger(__name__)

TASK = "token-classification"
METRICS = "metrics.json"
REPORT = "report.txt"
OUTSIDE = "O"
IGNORE = -100


class TokenTrainConfig(BaseModel):
    """Fine-tuning a token classifier (NER) from a table of texts and entity spans."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_column: str
    spans_column: str = Field(
        "spans", description="Column of list<struct<start, end, label>> character spans."
    )
    base_model: str = Field("minilm", description="Local model dir or the alias 'minilm'.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    batch_size: int = Field(16, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    max_length: int = Field(128, gt=1, description="Truncate training texts to this many tokens.")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out share of the rows.")
    eval_table: str | None = Field(
        None,
        description="Evaluate on this table (a path or s3://... URI) instead of a held-out "
        "split of TABLE.",
    )
    max_rows: int | None = Field(
        None, gt=0, description="Sample at most this many rows (of TABLE) to bound time."
    )
    seed: int = 0
    device: Device = "auto"


@dataclass
class TokenTrainReport:
    """Entity-level held-out figures and sizes of a token-classification run; per type in
    MODEL_OUT/eval/metrics.json."""

    precision: float
    recall: float
    f1: float
    labels: list[str]
    train_rows: int
    eval_rows: int
    epochs: float
    seconds: float
    base_model: str
    task: str = TASK
    eval_dir: str = EVAL_DIR


@dataclass
class SpanExamples:
    """A table's usable rows: texts and, per row, its spans as (start, end, label)."""

    texts: list[str]
    spans: list[list[tuple[int, int, str]]]


def check_spans_type(file: SourceFile, dtype: pa.DataType, column: str) -> None:
    """The spans column must be a list of structs with start, end (integers) and label."""
    value = dtype.value_type if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) else None
    names = (
        {value.field(i).name: value.field(i).type for i in range(value.num_fields)}
        if value is not None and pa.types.is_struct(value)
        else {}
    )
    if not (
        pa.types.is_integer(names.get("start", pa.null()))
        and pa.types.is_integer(names.get("end", pa.null()))
        and names.get("label") in (pa.string(), pa.large_string())
    ):
        raise InputError(
            f"{file.path}: spans column {column!r} has type {dtype}; expected "
            "list<struct<start: int, end: int, label: string>> (character offsets)"
        )


def load_spans(table_path: str | Location, config: TokenTrainConfig) -> SpanExamples:
    """Texts and spans of every file of a table (a local path or a `Location`; each file read
    on its own filesystem); rows with unusable text or null spans are dropped, a span outside
    its text is an `InputError` naming file and row."""
    texts: list[str] = []
    spans: list[list[tuple[int, int, str]]] = []
    for file in discover(table_path):
        schema = read_schema(file)
        check_text_column(file, schema, config.text_column)
        check_spans_type(
            file, require_column(file, schema, config.spans_column, "spans"), config.spans_column
        )
        table = read_columns(file, [config.text_column, config.spans_column])
        text = as_plain_text(table.column(config.text_column))
        column = table.column(config.spans_column).combine_chunks()
        keep = pc.and_(pc.is_null(text_problems(text)), pc.is_valid(column))
        rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        for row, value, entities in zip(
            rows.tolist(),
            text.take(pa.array(rows)).to_pylist(),
            column.take(pa.array(rows)).to_pylist(),
            strict=True,
        ):
            row_spans = []
            for span in entities:
                start, end, label = span["start"], span["end"], span["label"]
                if start is None or end is None or not label or not 0 <= start < end <= len(value):
                    raise InputError(
                        f"{file.path}: row {row}: span {span} is not a labelled character range "
                        f"inside its {len(value)}-character text"
                    )
                row_spans.append((int(start), int(end), str(label)))
            texts.append(value)
            spans.append(sorted(row_spans))
    if not texts:
        raise InputError(f"{table_path}: no row has both text and spans")
    return SpanExamples(texts, spans)


def tag_names(types: list[str]) -> list[str]:
    """`O`, then `B-T` and `I-T` for each entity type (sorted)."""
    return [OUTSIDE, *(f"{prefix}-{t}" for t in sorted(types) for prefix in ("B", "I"))]


def bio_tags(offsets: np.ndarray, spans: list[tuple[int, int, str]]) -> list[str]:
    """Each token's BIO tag from its character offsets (tokens x 2; (0, 0) for special tokens
    gives `O`): a token overlapping a span is in it (the earliest span wins), the span's
    first token is `B-`, the rest `I-`."""
    tags = [OUTSIDE] * len(offsets)
    starts, ends = offsets[:, 0], offsets[:, 1]
    taken = np.zeros(len(offsets), dtype=bool)
    for start, end, label in spans:
        inside = np.flatnonzero((starts < end) & (ends > start) & (ends > starts) & ~taken)
        for i, token in enumerate(inside.tolist()):
            tags[token] = f"{'B' if i == 0 else 'I'}-{label}"
        taken[inside] = True
    return tags


def _encode(tokenizer: Any, examples: SpanExamples, max_length: int) -> tuple[list, list]:
    """Token ids and BIO tags (special tokens `None`) of every row, truncated."""
    encoded = tokenizer(
        examples.texts,
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    ids, tags = [], []
    for row, encoding in enumerate(encoded.encodings):
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        row_tags: list[str | None] = list(bio_tags(offsets, examples.spans[row]))
        for i, special in enumerate(encoding.special_tokens_mask):
            if special:
                row_tags[i] = None
        ids.append(encoding.ids)
        tags.append(row_tags)
    return ids, tags


def _split(rows: int, config: TokenTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out row indices of TABLE (all rows train with `eval_table`)."""
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(rows)
    if config.max_rows:
        order = order[: config.max_rows]
    if config.eval_table:
        return order, np.zeros(0, dtype=np.int64)
    held = max(1, round(len(order) * config.eval_fraction))
    return order[held:], np.sort(order[:held])


def train_tokens(
    table_path: str,
    model_out: str,
    config: TokenTrainConfig,
    storage_options: dict[str, str] | None = None,
) -> TokenTrainReport:
    """Fine-tune `config.base_model` for token classification and save a standard HF dir
    (safetensors, tokenizer, id2label of BIO tags, `training_metrics.json`, `eval/`),
    written to a temp dir and renamed into place. TABLE and `eval_table` may be object-store
    URIs (opened with `storage_options`); MODEL_OUT is a local folder."""
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    table, *eval_table = resolve_inputs(
        [table_path, *([config.eval_table] if config.eval_table else [])], storage_options
    )
    files = discover(table)
    out = check_model_out(model_out, files)
    examples = load_spans(table, config)
    held_out = load_spans(eval_table[0], config) if eval_table else None
    types = sorted({label for row in examples.spans for _, _, label in row})
    if not types:
        raise InputError(f"{table_path}: spans column {config.spans_column!r} holds no entity")
    names = tag_names(types)
    train_rows, eval_rows = _split(len(examples.texts), config)
    if held_out is None:
        held_out = SpanExamples(
            [examples.texts[i] for i in eval_rows], [examples.spans[i] for i in eval_rows]
        )
    base = resolve_model_dir(config.base_model)
    device = resolve_device(config.device)
    tokenizer, model = _load(base, names, device)
    ids, tags = _encode(tokenizer, examples, config.max_length)
    index = {name: i for i, name in enumerate(names)}
    targets = [[IGNORE if t is None else index[t] for t in row] for row in tags]
    _fit_tokens(model, tokenizer, ids, targets, train_rows, config, device)
    eval_ids, eval_tags = _encode(tokenizer, held_out, config.max_length)
    predicted = _predict_tags(model, tokenizer, eval_ids, eval_tags, names, device)
    gold = [[t for t in row if t is not None] for row in eval_tags]
    about = {
        "table": config.eval_table or table_path,
        "spans_column": config.spans_column,
        "model": model_out,
        "split": (
            f"the table {config.eval_table}"
            if config.eval_table
            else f"held out by bertetl train ({config.eval_fraction:.0%} of rows, "
            f"seed {config.seed})"
        ),
    }
    metrics = entity_metrics(gold, predicted, about)
    report = TokenTrainReport(
        precision=metrics["precision"],
        recall=metrics["recall"],
        f1=metrics["f1"],
        labels=types,
        train_rows=len(train_rows),
        eval_rows=len(gold),
        epochs=config.epochs,
        seconds=round(time.perf_counter() - started, 1),
        base_model=str(base),
    )
    _save(
        out,
        model,
        tokenizer,
        report,  # type: ignore[arg-type]
        lambda folder: write_metrics(folder, gold, predicted, metrics),
    )
    return report


def entity_metrics(
    gold: list[list[str]], predicted: list[list[str]], about: dict[str, Any]
) -> dict[str, Any]:
    """seqeval's entity-level figures (default mode): overall, per type and averaged."""
    from seqeval.metrics import (
        accuracy_score,
        classification_report,
        f1_score,
        precision_score,
        recall_score,
    )

    table = classification_report(gold, predicted, output_dict=True, zero_division=0)

    def figures(values: dict[str, Any]) -> dict[str, Any]:
        return {
            "precision": float(values["precision"]),
            "recall": float(values["recall"]),
            "f1": float(values["f1-score"]),
            "support": int(values["support"]),
        }

    per_type = {k: figures(v) for k, v in table.items() if not k.endswith(" avg")}
    averages = {k: figures(v) for k, v in table.items() if k.endswith(" avg")}
    return {
        "task": TASK,
        "about": about,
        "definition": "seqeval entity-level (default, conlleval-compatible mode) over BIO tags "
        "of the model's tokens; an entity counts when its type, first and last token match",
        "rows": len(gold),
        "tokens": int(sum(len(row) for row in gold)),
        "entities": int(sum(v["support"] for v in per_type.values())),
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
        "f1": float(f1_score(gold, predicted, zero_division=0)),
        "token_accuracy": float(accuracy_score(gold, predicted)),
        "per_type": per_type,
        "averages": averages,
    }


def write_metrics(
    folder: Path, gold: list[list[str]], predicted: list[list[str]], metrics: dict[str, Any]
) -> dict[str, Path]:
    """`metrics.json` and seqeval's text report (`report.txt`) into `folder`."""
    from seqeval.metrics import classification_report

    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    text = classification_report(gold, predicted, digits=4, zero_division=0)
    (folder / REPORT).write_text(f"{metrics['definition']}\n\n{text}", encoding="utf-8")
    return {METRICS: folder / METRICS, REPORT: folder / REPORT}


def _load(base: Path, names: list[str], device: Any) -> tuple[Any, Any]:
    """The base model's fast tokenizer and a fresh token-classification head over its encoder."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if not tokenizer.is_fast:
        raise InputError(f"{base}: token classification needs a fast tokenizer (tokenizer.json)")
    tokenizer.model_max_length = max_length_for(base)
    model = AutoModelForTokenClassification.from_pretrained(
        base,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        local_files_only=True,
        use_safetensors=True,
        trust_remote_code=False,
    ).to(device)
    return tokenizer, model


def _pad(tokenizer: Any, ids: list[list[int]], rows: np.ndarray, device: Any) -> dict[str, Any]:
    batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def _fit_tokens(
    model: Any,
    tokenizer: Any,
    ids: list[list[int]],
    targets: list[list[int]],
    train_rows: np.ndarray,
    config: TokenTrainConfig,
    device: Any,
) -> None:
    """AdamW with linear warm-up and decay over `config.epochs` passes of length-bucketed
    batches (as `bertetl.training.train._fit`, with a tag per token)."""
    import torch
    import transformers

    rng = np.random.default_rng(config.seed)
    lengths = np.array([len(row) for row in ids])
    steps_per_epoch = -(-len(train_rows) // config.batch_size)
    total_steps = max(1, round(steps_per_epoch * config.epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=total_steps // 10, num_training_steps=total_steps
    )
    model.train()
    step = 0
    while step < total_steps:
        for rows in _batches(lengths[train_rows], config.batch_size, rng):
            if step >= total_steps:
                break
            batch_rows = train_rows[rows]
            inputs = _pad(tokenizer, ids, batch_rows, device)
            width = inputs["input_ids"].shape[1]
            labels = torch.full((len(batch_rows), width), IGNORE, dtype=torch.long)
            for i, row in enumerate(batch_rows.tolist()):
                labels[i, : len(targets[row])] = torch.tensor(targets[row])
            loss = model(**inputs, labels=labels.to(device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 20 == 0 or step == total_steps:
                log.info("step %d/%d loss %.4f", step, total_steps, loss.item())


def _predict_tags(
    model: Any,
    tokenizer: Any,
    ids: list[list[int]],
    tags: list[list[str | None]],
    names: list[str],
    device: Any,
) -> list[list[str]]:
    """The argmax tag of every content token (special tokens left out), in batches of 64."""
    import torch

    model.eval()
    predicted: list[list[str]] = []
    rows = np.arange(len(ids))
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            part = rows[start : start + 64]
            best = model(**_pad(tokenizer, ids, part, device)).logits.argmax(-1).cpu().numpy()
            for i, row in enumerate(part.tolist()):
                predicted.append(
                    [names[int(best[i, j])] for j, t in enumerate(tags[row]) if t is not None]
                )
    return predicted
