"""Fine-tune a sequence classifier from a labelled Parquet table, with a held-out evaluation."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.config import TrainConfig
from bertetl.engine.encoders import resolve_device
from bertetl.engine.model_files import max_length_for, resolve_model_dir
from bertetl.engine.tokenize import as_plain_text, text_problems
from bertetl.errors import InputError
from bertetl.evaluate.metrics import compute_metrics
from bertetl.evaluate.predictions import Predictions, is_label_value
from bertetl.evaluate.run import write_report
from bertetl.io.inputs import resolve_inputs
from bertetl.io.paths import check_replaceable_folder
from bertetl.io.read import (
    SourceFile,
    check_text_column,
    discover,
    read_columns,
    read_schema,
    require_column,
)
from bertetl.io.stores.locations import Location, StorageError, is_uri

log = logging.getLogger(__name__)

METRICS_FILE = "training_metrics.json"
#: What `train` writes into MODEL_OUT: the model's and tokenizer's files (transformers'
#: `save_pretrained`), its metrics, and the held-out evaluation in `eval/` (a MODEL_OUT
#: holding anything else is refused: it is replaced whole).
MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.bin", "eval/*")


#: The held-out evaluation (`bertetl evaluate`'s report) inside MODEL_OUT.
EVAL_DIR = "eval"


@dataclass
class TrainReport:
    """Held-out metrics and sizes of a fine-tuning run; the whole held-out evaluation
    (metrics.json, plots, report.html) is in MODEL_OUT/eval/."""

    accuracy: float
    macro_f1: float
    labels: list[str]
    train_rows: int
    eval_rows: int
    epochs: float
    seconds: float
    base_model: str
    eval_dir: str = EVAL_DIR


@dataclass
class Examples:
    """A labelled table's usable rows: texts, label ids, label names, and where each row is
    (`sources[file_index[i]]`, row `row[i]` of that file)."""

    texts: list[str]
    labels: np.ndarray
    names: list[str]
    sources: list[str]
    file_index: np.ndarray
    row: np.ndarray


def check_model_out(model_out: str, files: list[SourceFile]) -> Path:
    """Refuse a MODEL_OUT that is not a local folder, or that would replace anything but an
    earlier bertetl model."""
    if is_uri(model_out):
        raise StorageError(
            f"MODEL_OUT {model_out}: the model is written to a local folder; give one (and "
            "copy it to the store afterwards)"
        )
    out = check_replaceable_folder(
        model_out, "MODEL_OUT", "model", "bertetl model", METRICS_FILE, owned=MODEL_FILES
    )
    for file in files:
        if file.filesystem is not None:
            continue
        if Path(file.path).resolve().is_relative_to(out):
            raise InputError(f"MODEL_OUT {model_out} holds the training table {file.path}")
        depth = len(Path(file.relative).parts)
        root = Path(file.path).resolve().parents[depth - 1]
        if (len(files) > 1 or depth > 1) and out.is_relative_to(root):  # a folder TABLE
            raise InputError(
                f"MODEL_OUT {model_out} lies inside the training table {root}; its files would "
                "become part of the table: give a folder outside it"
            )
    return out


def load_examples(
    table_path: str | Location, files: list[SourceFile], config: TrainConfig
) -> Examples:
    """Texts, integer labels and label names from every file of a table (each read on its
    own filesystem); unusable rows dropped."""
    tables = []
    origin: list[tuple[np.ndarray, np.ndarray]] = []
    for index, file in enumerate(files):
        schema = read_schema(file)
        check_text_column(file, schema, config.text_column)
        label_type = require_column(file, schema, config.label_column, "label")
        if not is_label_value(label_type):
            raise InputError(
                f"{file.path}: label column {config.label_column!r} has type {label_type}; "
                "expected strings, integers, booleans or a dictionary of them"
            )
        table = read_columns(file, [config.text_column, config.label_column])
        text = as_plain_text(table.column(config.text_column))
        label = pc.cast(as_plain_text(table.column(config.label_column)), pa.string())
        keep = pc.and_(pc.is_null(text_problems(text)), pc.is_valid(label))
        tables.append(pa.table({"text": text, "label": label}).filter(keep))
        rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        origin.append((np.full(len(rows), index, dtype=np.int32), rows))
    table = pa.concat_tables(tables)
    names = sorted(pc.unique(table.column("label")).to_pylist())
    if len(names) < 2:
        raise InputError(
            f"{table_path}: label column {config.label_column!r} needs at least two distinct "
            f"labels, found {names}"
        )
    ids = pc.index_in(table.column("label"), pa.array(names)).to_numpy().astype(np.int64)
    return Examples(
        texts=table.column("text").to_pylist(),
        labels=ids,
        names=names,
        sources=[file.relative for file in files],
        file_index=np.concatenate([index for index, _ in origin]),
        row=np.concatenate([rows for _, rows in origin]),
    )


def stratified_split(
    labels: np.ndarray, eval_fraction: float, max_rows: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the train and eval splits, each label split in the same proportion."""
    rng = np.random.default_rng(seed)
    keep_share = min(1.0, max_rows / len(labels)) if max_rows else 1.0
    train, held = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        rows = rows[: max(2, round(len(rows) * keep_share))]
        n_eval = max(1, round(len(rows) * eval_fraction))
        held.append(rows[:n_eval])
        train.append(rows[n_eval:])
    return rng.permutation(np.concatenate(train)), np.sort(np.concatenate(held))


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length (sorted within chunks of 50 batches) to cut padding."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train(
    table_path: str,
    model_out: str,
    config: TrainConfig,
    storage_options: dict[str, str] | None = None,
) -> TrainReport:
    """Fine-tune `config.base_model` for sequence classification and save a standard HF dir.

    The output holds safetensors weights, the tokenizer, `id2label`, `training_metrics.json`
    and `eval/` (the held-out split's `bertetl evaluate` report: metrics.json, plots,
    report.html); it is written to a temp dir and renamed into place, so a failed run leaves
    nothing behind. TABLE may be an object-store URI (`s3://bucket/prefix`, opened with
    `storage_options`; docs/STORAGE.md); MODEL_OUT is a local folder.
    """
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    (table,) = resolve_inputs([table_path], storage_options)
    files = discover(table)
    out = check_model_out(model_out, files)
    examples = load_examples(table, files, config)
    texts, labels, names = examples.texts, examples.labels, examples.names
    train_rows, eval_rows = stratified_split(
        labels, config.eval_fraction, config.max_rows, config.seed
    )
    base = resolve_model_dir(config.base_model)
    device = resolve_device(config.device)
    tokenizer, model = _load(base, names, device)
    encoded = tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]

    def collate(rows: np.ndarray) -> dict[str, Any]:
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
        return {k: v.to(device) for k, v in batch.items()}

    lengths = np.array([len(ids) for ids in encoded])
    _fit(model, collate, lengths, labels, train_rows, config, device)
    held_out = Predictions.from_probabilities(
        names,
        labels[eval_rows],
        _predict(model, collate, eval_rows),
        texts=[texts[i] for i in eval_rows],
        sources=examples.sources,
        file_index=examples.file_index[eval_rows],
        rows=examples.row[eval_rows],
    )
    about = {
        "table": table_path,
        "label_column": config.label_column,
        "model": model_out,
        "prefix": "",
        "split": f"held out by bertetl train ({config.eval_fraction:.0%} per label, "
        f"seed {config.seed})",
    }
    metrics = compute_metrics(held_out, about)
    report = TrainReport(
        accuracy=metrics["accuracy"],
        macro_f1=metrics["f1"]["macro"],
        labels=names,
        train_rows=len(train_rows),
        eval_rows=len(eval_rows),
        epochs=config.epochs,
        seconds=round(time.perf_counter() - started, 1),
        base_model=str(base),
    )
    _save(out, model, tokenizer, report, lambda folder: write_report(folder, held_out, metrics))
    return report


def _load(base: Path, names: list[str], device: Any) -> tuple[Any, Any]:
    """The base model's tokenizer and a fresh classification head over its encoder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    # enrich truncates where the base model does (MiniLM: 256), not at the training length
    tokenizer.model_max_length = max_length_for(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        local_files_only=True,
        use_safetensors=True,
        trust_remote_code=False,
    ).to(device)
    return tokenizer, model


def _fit(
    model: Any,
    collate: Callable[[np.ndarray], dict[str, Any]],
    lengths: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    config: TrainConfig,
    device: Any,
) -> None:
    """AdamW with linear warm-up and decay over `config.epochs` passes of length-bucketed
    batches."""
    import torch
    import transformers

    rng = np.random.default_rng(config.seed)
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
            target = torch.as_tensor(labels[batch_rows], device=device)
            loss = model(**collate(batch_rows), labels=target).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 20 == 0 or step == total_steps:
                log.info("step %d/%d loss %.4f", step, total_steps, loss.item())


def _predict(
    model: Any, collate: Callable[[np.ndarray], dict[str, Any]], rows: np.ndarray
) -> np.ndarray:
    """Every label's probability (softmax) for each row, in batches of 64."""
    import torch

    model.eval()
    probabilities = np.empty((len(rows), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            logits = model(**collate(rows[start : start + 64])).logits.float()
            probabilities[start : start + 64] = logits.softmax(-1).cpu().numpy()
    return probabilities


def _save(
    out: Path,
    model: Any,
    tokenizer: Any,
    report: TrainReport,
    write_eval: Callable[[Path], object],
) -> None:
    """Save (with the held-out evaluation, `write_eval(folder)`) into a temp folder beside
    `out`, then rename it into place (replacing an earlier `bertetl train` output)."""
    staging = out.parent / f".{out.name}.{os.getpid()}.bertetl-tmp"
    previous = out.parent / f".{out.name}.{os.getpid()}.bertetl-old"
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_eval(staging / EVAL_DIR)
        (staging / METRICS_FILE).write_text(json.dumps(asdict(report), indent=2))
        if out.exists():
            os.replace(out, previous)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
