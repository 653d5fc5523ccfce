"""Heads in `bertetl bench`: named entities and zero-shot labels against what a user writes.

- `ner:DIR` (a token classifier): transformers' `pipeline("token-classification",
  aggregation_strategy=...)`, batch 32, against the engine's NER stages (`engine-model`: the
  NER model stage over windows tokenized beforehand; `engine-e2e`: Parquet in, Parquet out).
- `zero-shot:MODEL` (an embedding model and a label set): sentence-transformers similarity
  (`encode` the rows, `util.cos_sim` to the label vectors, softmax over the temperature)
  against the engine's embedding stage plus its zero-shot head. The engine's systems also
  time the same stages without the head, alternated with it, in the same process: what a
  zero-shot head costs on top of the embeddings.

Each system hands its outputs back in a comparable form (`comparable`), and `add_agreement`
holds every system of a (model, input set) to the reference baseline of the task: the share
of rows with the same entities (spans and labels) or the same label, and the largest score
difference.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.bench.e2e import engine_e2e_run
from bertetl.engine.ner import ENTITIES, ner_column
from bertetl.results import FileResult
from bertetl.schema import LABEL, SCORE

#: The head name the NER systems use (the engine writes `ner_entities`).
NER_HEAD = "ner"
NER_COLUMN = ner_column("", NER_HEAD, ENTITIES)
#: The baseline each head task's systems are held to.
REFERENCE = {"ner": "pipeline", "zero_shot": "sentence-transformers"}
#: The demo's review classes with two descriptions each (docs/ENRICHMENTS.md, "How well it
#: works"): the default zero-shot label set of the bench.
REVIEW_LABELS = {
    "fresh": ["a positive review that praises the film", "a great movie, I loved it"],
    "rotten": [
        "a negative review that criticises the film",
        "a bad, boring movie, a waste of time",
    ],
    "plot": [
        "a summary of the film's story and its characters",
        "the plot of the movie, what happens to the characters",
    ],
}
BASELINE_BATCH = 32

#: One row's entities as (start, end, label, score); one row's zero-shot (label, score).
Entity = tuple[int, int, str, float]


@dataclass
class Paired:
    """A system timed with and without its head, alternated: `run` (with the head) is the
    system's figure; `without_head` runs the same loaded stages without it."""

    run: Callable[[], Any]
    without_head: Callable[[], Any]

    def __call__(self) -> Any:
        return self.run()


def timed_pair(pair: Paired, repeats: int, sync: Callable[[], None]) -> tuple[list, list, Any]:
    """Seconds with the head, seconds without it (alternating which goes first, so a drift
    in the machine's speed hits both alike), and the last output with the head."""
    with_head: list[float] = []
    without: list[float] = []
    last: Any = None
    for repeat in range(repeats):
        order = [(pair.run, with_head), (pair.without_head, without)]
        for run, seconds in order if repeat % 2 == 0 else order[::-1]:
            sync()
            started = time.perf_counter()
            out = run()
            sync()
            seconds.append(time.perf_counter() - started)
            if run is pair.run:
                last = out
    return with_head, without, last


def head_cost(with_head: list[float], without: list[float], rows: int) -> dict[str, Any]:
    """The embed-only rate and the head's cost: the median, over repeats, of embed-only
    seconds over embed+head seconds (1.0: the head is free; 0.9: it costs 10%)."""
    ratios = [b / a for a, b in zip(with_head, without, strict=True)]
    return {
        "embed_only_seconds": [round(s, 4) for s in without],
        "embed_only_rows_per_s": round(rows / statistics.median(without), 1),
        "x_embed_only": round(statistics.median(ratios), 3),
    }


# ---------------------------------------------------------------- baselines


def token_classification_run(
    texts: list[str],
    model_dir: Path,
    max_length: int,
    device: Any,
    dtype: Any,
    aggregation: str = "simple",
    **_: Any,
) -> Callable[[], Any]:
    """transformers' token-classification pipeline, batch 32, with the engine's aggregation
    and truncation length."""
    from transformers import pipeline as hf_pipeline

    tagger = hf_pipeline(
        "token-classification",
        model=str(model_dir),
        device=device,
        dtype=dtype,
        aggregation_strategy=aggregation,
    )
    assert tagger.tokenizer is not None  # a token classifier always has one
    tagger.tokenizer.model_max_length = max_length  # truncate where the engine does
    return lambda: tagger(texts, batch_size=BASELINE_BATCH)


def similarity_run(
    texts: list[str], model_dir: Path, device: Any, dtype: Any, pipeline: Any, **_: Any
) -> Callable[[], Any]:
    """sentence-transformers similarity: label vectors (the normalised mean of each label's
    description embeddings, made once, before the clock, as the engine makes them in
    `setup()`), then per run `encode` the rows (batch 32), `util.cos_sim`, softmax over the
    engine's temperature. Returns (labels, scores)."""
    import torch
    from sentence_transformers import SentenceTransformer, util

    config = pipeline.config
    head = config.zero_shot[0]
    template = config.zero_shot_template
    model = SentenceTransformer(str(model_dir), device=str(device))
    if dtype != torch.float32:
        model = model.to(dtype)
    vectors = []
    for label in head.labels:
        texts_ = [template.replace("{}", d) if template else d for d in label.descriptions]
        described = model.encode(texts_, convert_to_tensor=True, show_progress_bar=False)
        vectors.append(torch.nn.functional.normalize(described.float().mean(dim=0), dim=0))
    labels = torch.stack(vectors)
    names = head.label_names()

    def run() -> tuple[list[str], np.ndarray]:
        rows = model.encode(
            texts, batch_size=BASELINE_BATCH, convert_to_tensor=True, show_progress_bar=False
        )
        probabilities = torch.softmax(
            util.cos_sim(rows.float(), labels) / config.zero_shot_temperature, dim=1
        )
        best = probabilities.max(dim=1)
        return [names[i] for i in best.indices.tolist()], best.values.cpu().numpy()

    return run


# ---------------------------------------------------------------- the engine


def _without_head(pipeline: Any) -> Any:
    """The same pipeline (same loaded tokenizer, model and settings) with the zero-shot head
    left out: its model stages are the embedding stage alone."""
    embed_only = copy.copy(pipeline)
    embed_only.models = [pipeline.embed]
    return embed_only


def stages_run(texts: list[str], pipeline: Any, **_: Any) -> Callable[[], Any] | Paired:
    """The engine's model stages alone (for zero-shot: the embedding stage and the head)
    over windows validated and tokenized beforehand; paired with the embedding stage alone
    when there is a zero-shot head."""
    window = pipeline.config.window_rows
    batches = (
        pa.RecordBatch.from_pydict({pipeline.config.text_column: texts[i : i + window]})
        for i in range(0, len(texts), window)
    )
    windows = list(pipeline.prepare(batches))

    def through(models: list[Any]) -> Callable[[], list[pa.RecordBatch]]:
        def run() -> list[pa.RecordBatch]:
            stream: Any = windows
            for model in models:
                stream = model(stream)
            return list(stream)

        return run

    if pipeline.config.zero_shot:
        return Paired(through(pipeline.models), through([pipeline.embed]))
    return through(pipeline.models)


def e2e_run(texts: list[str], pipeline: Any, **kwargs: Any) -> Callable[[], Any] | Paired:
    """The engine end to end; paired with the same pipeline without its zero-shot head."""
    run = engine_e2e_run(texts, pipeline, **kwargs)
    if pipeline.config.zero_shot:
        return Paired(run, engine_e2e_run(texts, _without_head(pipeline), tag="embed", **kwargs))
    return run


# ---------------------------------------------------------------- agreement


def comparable(task: str, output: Any) -> list[Any]:
    """A system's last output as one value per row: a list of `Entity` (NER), or
    (label, score) (zero-shot)."""
    if isinstance(output, FileResult):  # an end-to-end run: read what it wrote
        if output.error or output.dest is None:
            raise RuntimeError(f"the engine failed on {output.source}: {output.error}")
        columns = [NER_COLUMN] if task == "ner" else [LABEL, SCORE]
        output = pq.read_table(output.dest, columns=columns).to_batches()
    if task == "ner":
        if output and isinstance(output[0], pa.RecordBatch):
            rows = pa.Table.from_batches(output).column(NER_COLUMN).to_pylist()
            return [
                [(e["start"], e["end"], e["label"], float(e["score"])) for e in row or []]
                for row in rows
            ]
        return [  # the pipeline: a list of entity dicts per text
            [(int(e["start"]), int(e["end"]), e["entity_group"], float(e["score"])) for e in row]
            for row in output
        ]
    if isinstance(output, tuple):  # the sentence-transformers baseline
        labels, scores = output
        return list(zip(labels, scores.astype(float).tolist(), strict=True))
    table = pa.Table.from_batches(output)
    return list(zip(table.column(LABEL).to_pylist(), table.column(SCORE).to_pylist(), strict=True))


def agreement(task: str, ours: list[Any], reference: list[Any]) -> dict[str, Any]:
    """How far a system's outputs are from the reference's on the same rows: the share of
    rows with the same entities (start, end, label) or the same label, and the largest
    score difference on those rows."""
    if len(ours) != len(reference):
        raise ValueError(f"{len(ours)} rows against the reference's {len(reference)}")
    same = 0
    diff = 0.0
    for mine, theirs in zip(ours, reference, strict=True):
        if task == "ner":
            if [e[:3] for e in mine] != [e[:3] for e in theirs]:
                continue
            scores = [abs(a[3] - b[3]) for a, b in zip(mine, theirs, strict=True)]
        else:
            if mine[0] != theirs[0]:
                continue
            scores = [abs(mine[1] - theirs[1])]
        same += 1
        diff = max(diff, *scores, 0.0)
    return {"rows_agree": round(same / max(1, len(ours)), 5), "score_max_diff": diff}


def add_agreement(task: str, group: list[dict[str, Any]], outputs: dict[str, list[Any]]) -> None:
    """Each row of one (model, input set) whose system left outputs: its entity count (NER)
    and its agreement with the task's reference baseline."""
    reference = outputs.get(REFERENCE.get(task, ""))
    for row in group:
        mine = outputs.get(row["system"])
        if mine is None:
            continue
        if task == "ner":
            row["entities"] = sum(len(entities) for entities in mine)
        if reference is not None and row["system"] != REFERENCE[task]:
            row.update(agreement(task, mine, reference))
