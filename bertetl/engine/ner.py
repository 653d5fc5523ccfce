"""Named entities: tokenize with character offsets, run a token classifier, and aggregate its
token scores into entities exactly as transformers' `pipeline("token-classification",
aggregation_strategy=...)` does, in NumPy over whole batches.

Two stages, like tokenize and classify: `NerTokenizeStage` (CPU, in `Pipeline.prepare`) cuts
each valid row's content tokens into token windows (`bertetl.engine.long_text`'s rule) and keeps
their character offsets; `NerStage` (the model, in `Pipeline.infer`) runs the windows in
token-budget batches, stitches the windows back into one score row per token, and appends
`{prefix}{name}_entities` (and, with `redact`, `{prefix}{name}_redacted`). `ner_stages()`
builds both.

Aggregation (transformers' `TokenClassificationPipeline.gather_pre_entities`, `aggregate`,
`aggregate_words`, `group_entities`), per row, on its content tokens (special tokens skipped):
- scores = softmax of the logits;
- a token is a *subword* when the tokenizer has a continuing-subword prefix (WordPiece's `##`)
  and the token's string length differs from its character span; otherwise (BPE, ...) when it
  does not start the text and neither it nor the character before it is a space; `[UNK]` never is;
- `simple`: each token is a unit, labelled with its argmax and that score;
  `first` / `average` / `max`: a word (a token and the subwords after it) is a unit, labelled by
  its first token's scores / the mean of its tokens' scores / the token with the highest score;
- units are grouped while their tag (`B-X`/`I-X` -> `X`, any other label is its own tag) stays
  the same and the next unit is not a `B-`; a group's label is its first unit's label without
  the `B-`/`I-` prefix (text up to the first `-` dropped), its score the mean of its units' scores,
  its span from its first unit's start to its last unit's end; groups labelled `O` are dropped.

Long texts (`--long-text window`): every token takes its scores from the one window where it
has the most context: the largest `min(tokens before it, tokens after it)` inside the window,
where a window edge at the start or end of the text counts as unlimited context (nothing was
cut there); ties go to the earlier window. Aggregation then runs once over the whole row, so an
entity in an overlap is found once and never split at a window border.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.engine.batching import pad_batch, plan_batches
from bertetl.engine.encoders import (
    DEFAULT_BATCH_TOKENS,
    ModelRuntime,
    load_runtime_model,
    runtime_device,
)
from bertetl.engine.heap import pin_mmap_threshold
from bertetl.engine.long_text import LongTextOptions, WindowRule, cut_windows
from bertetl.engine.model_files import max_length_for, tokenizer_key
from bertetl.engine.oom import forward_splitting, join_padded
from bertetl.engine.tokenize import (
    TokenizerSnapshot,
    as_plain_text,
    first_tokens,
    load_fast_tokenizer,
    special_tokens,
)
from bertetl.errors import ModelError
from bertetl.results import StageCounters
from bertetl.schema import ENRICH_ERROR, TOKENS_PREFIX

log = logging.getLogger(__name__)

AGGREGATIONS = ("simple", "first", "average", "max")
ENTITIES = "entities"
REDACTED = "redacted"
#: The label that means "no entity" (transformers' default `ignore_labels`).
OUTSIDE = "O"

ENTITY_TYPE = pa.struct(
    [
        pa.field("start", pa.int32()),
        pa.field("end", pa.int32()),
        pa.field("label", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("text", pa.string()),
    ]
)
#: Per content token: character offsets in the original text and flags (`SUBWORD`, `SKIP`).
OFFSETS_TYPE = pa.struct(
    [pa.field("start", pa.int32()), pa.field("end", pa.int32()), pa.field("flags", pa.int8())]
)
SUBWORD = 1  # the token continues the word before it
SKIP = 2  # a special token inside the text (transformers skips it)


def ner_column(prefix: str, name: str, what: str) -> str:
    """`{prefix}{name}_{what}`, or `{prefix}{what}` for an unnamed head."""
    return f"{prefix}{name}_{what}" if name else f"{prefix}{what}"


def ner_fields(prefix: str, name: str, redact: bool) -> list[pa.Field]:
    """The columns an NER head appends: entities, then the redacted text with `redact`."""
    fields = [pa.field(ner_column(prefix, name, ENTITIES), pa.list_(ENTITY_TYPE))]
    if redact:
        fields.append(pa.field(ner_column(prefix, name, REDACTED), pa.string()))
    return fields


@dataclass(frozen=True)
class NerOptions:
    """How token scores become entities, and what is written."""

    aggregation: str = "simple"
    #: Entity labels to keep (without `B-`/`I-`); None keeps all.
    labels: tuple[str, ...] | None = None
    #: Also write the text with each kept entity replaced by `[LABEL]`.
    redact: bool = False

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation {self.aggregation!r} is not one of {', '.join(AGGREGATIONS)}"
            )


@dataclass(frozen=True)
class LabelScheme:
    """A token classifier's labels, as transformers' grouping reads them (per label id)."""

    names: list[str]  # id2label
    begins: np.ndarray  # bool: a `B-` label
    tags: np.ndarray  # int: grouping tag (`B-X`/`I-X` -> X; other labels are their own tag)
    entity: np.ndarray  # int: index into `entity_names` of the output label
    entity_names: list[str]  # output labels (`B-PER` -> `PER`, `O` -> `O`)

    @classmethod
    def from_names(cls, names: list[str]) -> LabelScheme:
        tag_names = [n[2:] if n.startswith(("B-", "I-")) else n for n in names]
        out = [n.split("-", 1)[-1] for n in names]
        entity_names = sorted(set(out))
        tags = sorted(set(tag_names))
        return cls(
            names=names,
            begins=np.array([n.startswith("B-") for n in names], dtype=bool),
            tags=np.array([tags.index(t) for t in tag_names], dtype=np.int64),
            entity=np.array([entity_names.index(o) for o in out], dtype=np.int64),
            entity_names=entity_names,
        )

    def kept(self, labels: tuple[str, ...] | None) -> np.ndarray:
        """Per output label: whether its entities are written (not `O`, in `labels`)."""
        return np.array(
            [n != OUTSIDE and (labels is None or n in labels) for n in self.entity_names]
        )


def read_label_scheme(model_dir: Path) -> LabelScheme:
    """The labels of a token classifier; any other model is a `ModelError` (one line)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {Path(model_dir) / 'config.json'}: {e}") from e
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForTokenClassification") for a in architectures):
        raise ModelError(
            f"{model_dir} is not a token-classification (NER) model (architectures: "
            f"{architectures or 'none'}); give one trained with a token-classification head, "
            "e.g. by `bertetl train --task token-classification`"
        )
    id2label = config.get("id2label") or {}
    return LabelScheme.from_names([str(id2label.get(str(i), i)) for i in range(len(id2label))])


# --- aggregation -------------------------------------------------------------------------


@dataclass
class Entities:
    """Entities of a batch, in row then text order; `label` indexes `LabelScheme.entity_names`."""

    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    label: np.ndarray
    scores: np.ndarray

    def take(self, keep: np.ndarray) -> Entities:
        return Entities(
            *(a[keep] for a in (self.rows, self.starts, self.ends, self.label, self.scores))
        )


def _run_starts(new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of each run that `new` (bool, True at a run's start) delimits."""
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(new)) - 1
    return first, last


def _word_units(
    probs: np.ndarray, first: np.ndarray, last: np.ndarray, strategy: str
) -> tuple[np.ndarray, np.ndarray]:
    """Each word's label id and score (`aggregate_word` for first, max and average)."""
    if strategy == "first":
        chosen = probs[first]
    elif strategy == "max":
        best = probs.max(axis=1)
        word = np.repeat(np.arange(len(first)), last - first + 1)
        top = np.maximum.reduceat(best, first)
        hits = np.flatnonzero(best == top[word])
        _, at = np.unique(word[hits], return_index=True)  # the first token reaching the max
        chosen = probs[hits[at]]
    elif strategy == "average":
        sums = np.add.reduceat(probs.astype(np.float64), first, axis=0)
        chosen = sums / (last - first + 1)[:, None]
    else:
        raise ValueError(f"unknown word aggregation {strategy!r}")
    label = chosen.argmax(axis=1)
    return label, chosen[np.arange(len(label)), label].astype(np.float64)


def aggregate(
    probs: np.ndarray,
    rows: np.ndarray,
    spans: np.ndarray,
    subword: np.ndarray,
    strategy: str,
    scheme: LabelScheme,
) -> Entities:
    """Entities from token scores, as transformers' token-classification pipeline builds them.

    `probs` (tokens x labels) are the softmax scores of the content tokens of many rows
    (`rows`, non-decreasing), `spans` (tokens x 2) their character offsets, `subword` whether
    each continues the word before it. Groups labelled `O` are left in (filter with
    `LabelScheme.kept`).
    """
    n = len(rows)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Entities(empty, empty, empty, empty, np.zeros(0))
    new_row = np.ones(n, dtype=bool)
    new_row[1:] = rows[1:] != rows[:-1]
    if strategy == "simple":
        label = probs.argmax(axis=1)
        score = probs[np.arange(n), label].astype(np.float64)
        unit_rows, starts, ends = rows, spans[:, 0], spans[:, 1]
    else:
        first, last = _run_starts(new_row | ~subword)
        label, score = _word_units(probs, first, last, strategy)
        unit_rows, starts, ends = rows[first], spans[first, 0], spans[last, 1]
    tags = scheme.tags[label]
    group = np.ones(len(label), dtype=bool)
    group[1:] = (
        (unit_rows[1:] != unit_rows[:-1]) | (tags[1:] != tags[:-1]) | scheme.begins[label[1:]]
    )
    first, last = _run_starts(group)
    means = np.add.reduceat(score, first) / (last - first + 1)
    return Entities(
        rows=unit_rows[first],
        starts=starts[first],
        ends=ends[last],
        label=scheme.entity[label[first]],
        scores=means,
    )


def best_context(
    window_rows: np.ndarray, window_content: np.ndarray, row_tokens: np.ndarray, stride: int
) -> np.ndarray:
    """For each content token of each row (row then position order), the index (into the
    windows' content tokens, window by window) of the copy with the most context.

    `window_rows[w]` is window w's row (windows of a row consecutive, in order),
    `window_content[w]` its content tokens, `row_tokens[r]` the row's content tokens.
    """
    windows = len(window_rows)
    first_window = np.searchsorted(window_rows, window_rows, side="left")
    k = np.arange(windows) - first_window  # window index within its row
    total = int(window_content.sum())
    copy_window = np.repeat(np.arange(windows), window_content)
    within = np.arange(total) - np.repeat(
        np.cumsum(window_content) - window_content, window_content
    )
    start = k * stride
    end = start + window_content  # exclusive, content positions
    big = np.iinfo(np.int64).max
    left = np.where(start[copy_window] == 0, big, within)
    right = np.where(
        end[copy_window] >= row_tokens[window_rows][copy_window],
        big,
        window_content[copy_window] - 1 - within,
    )
    context = np.minimum(left, right)
    row_start = np.zeros(len(row_tokens) + 1, dtype=np.int64)
    np.cumsum(row_tokens, out=row_start[1:])
    position = row_start[window_rows][copy_window] + start[copy_window] + within
    order = np.lexsort((copy_window, -context, position))
    keep = np.ones(total, dtype=bool)
    keep[1:] = position[order][1:] != position[order][:-1]
    return order[keep]


# --- stages ------------------------------------------------------------------------------


def ner_stages(
    model_dir: Path,
    text_column: str,
    name: str = "",
    *,
    prefix: str = "",
    options: NerOptions | None = None,
    max_length: int | None = None,
    long_text: LongTextOptions | None = None,
    runtime: ModelRuntime | None = None,
) -> tuple[NerTokenizeStage, NerStage]:
    """The tokenize stage (for `Pipeline.prepare`) and the model stage (for `infer`) of one
    NER head; checks the model (a token classifier, known labels) before any model work.
    The rows to skip are those with a message in `{prefix}enrich_error` (`ValidateTextStage`)."""
    error_column = prefix + ENRICH_ERROR
    key = "ner_" + tokenizer_key(Path(model_dir), max_length_for(Path(model_dir), max_length))
    tokenize = NerTokenizeStage(model_dir, text_column, error_column, key, max_length, long_text)
    infer = NerStage(
        model_dir,
        text_column,
        tokenize.tokens_column,
        name,
        prefix=prefix,
        options=options,
        runtime=runtime,
    )
    return tokenize, infer


def offsets_column_of(tokens_column: str) -> str:
    """The offsets column that goes with an NER tokens column."""
    return tokens_column + "_offsets"


class NerTokenizeStage:
    """Tokenizes the valid rows' text into token windows, keeping each content token's
    character offsets (which `TokenizeStage` drops) and subword flag.

    Appends the token windows (`list<list<int32>>`, as `TokenizeStage` does; field metadata
    `special_tokens` and `stride`) and `list<struct<start, end, flags>>` per content token.
    Both start with the internal prefix, so `Pipeline.finish` drops them.
    """

    name = "ner-tokenize"

    def __init__(
        self,
        model_dir: Path,
        text_column: str,
        error_column: str,
        key: str,
        max_length: int | None = None,
        long_text: LongTextOptions | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.text_column = text_column
        self.error_column = error_column
        self.tokens_column = TOKENS_PREFIX + key
        self.offsets_column = offsets_column_of(self.tokens_column)
        self.max_length = max_length_for(self.model_dir, max_length)
        self.long_text = long_text or LongTextOptions()
        self.counters = StageCounters()
        self.truncated_rows = 0
        self.rule: WindowRule | None = None
        self.head: list[int] = []
        self.tail: list[int] = []
        self._tokenizer: Any = None
        self._token_lengths = np.zeros(0, dtype=np.int64)
        self._unk_id = -1
        self._word_aware = True
        self._warned = False

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.text_column, self.error_column)

    @property
    def produces(self) -> tuple[str, ...]:
        return (self.tokens_column, self.offsets_column)

    def setup(self) -> None:
        tokenizer = load_fast_tokenizer(self.model_dir)
        tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = (
            True
        )
        self.head, self.tail = special_tokens(
            TokenizerSnapshot.of(tokenizer.backend_tokenizer).build()
        )
        options = self.long_text
        windowed = options.long_text == "window"
        try:
            self.rule = WindowRule(
                self.max_length - len(self.head) - len(self.tail),
                options.window_overlap if windowed else 0,
                options.max_windows if windowed else 1,
            )
        except ValueError as e:
            raise ModelError(f"{self.model_dir}: {e}") from e
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self._token_lengths = np.array([len(t or "") for t in tokens], dtype=np.int64)
        self._unk_id = -1 if tokenizer.unk_token_id is None else int(tokenizer.unk_token_id)
        model = getattr(getattr(tokenizer, "_tokenizer", None), "model", None)
        self._word_aware = bool(getattr(model, "continuing_subword_prefix", None))
        self._tokenizer = tokenizer

    def teardown(self) -> None:
        self._tokenizer = None

    def _rule(self) -> WindowRule:
        if self._tokenizer is None or self.rule is None:
            raise RuntimeError("NerTokenizeStage used before setup()")
        return self.rule

    def _encode(self, texts: list[str]) -> list[Any]:
        return self._tokenizer(
            texts,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        ).encodings

    def encodings(self, texts: list[str]) -> tuple[list[Any], np.ndarray]:
        """Each text's encoding with offsets (content tokens; at least its first `rule.limit`
        are the whole text's: `first_tokens`) and whether the text has more tokens than that."""
        first = first_tokens(texts, self._rule().limit, self._encode)
        return [f.encoding for f in first], np.array([f.truncated for f in first], dtype=bool)

    def _flags(
        self, texts: list[str], kept: np.ndarray, ids: np.ndarray, spans: np.ndarray
    ) -> np.ndarray:
        """SUBWORD per content token, as `gather_pre_entities` decides it."""
        starts, ends = spans[:, 0], spans[:, 1]
        if self._word_aware:
            lengths = self._token_lengths[np.minimum(ids, len(self._token_lengths) - 1)]
            subword = lengths != ends - starts
        else:
            if not self._warned:
                log.warning(
                    "%s: the tokenizer has no subword prefix; words are guessed from spaces "
                    "(as transformers does)",
                    self.model_dir,
                )
                self._warned = True
            rows = np.repeat(np.arange(len(texts)), kept)
            subword = np.array(
                [
                    s > 0 and " " not in texts[r][s - 1 : s + 1]
                    for r, s in zip(rows.tolist(), starts.tolist(), strict=True)
                ],
                dtype=bool,
            )
        subword &= ids != self._unk_id
        return subword.astype(np.int8) * SUBWORD

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            started = time.perf_counter()
            rule = self._rule()
            valid = np.flatnonzero(
                pc.is_null(batch.column(self.error_column)).to_numpy(zero_copy_only=False)
            )
            text = as_plain_text(batch.column(self.text_column)).take(pa.array(valid))
            texts = text.to_pylist() if len(valid) else []
            encodings, truncated = self.encodings(texts)
            kept_valid = np.array([min(len(e.ids), rule.limit) for e in encodings], dtype=np.int64)
            total = int(kept_valid.sum())
            ids = np.fromiter(
                chain.from_iterable(e.ids[: rule.limit] for e in encodings), np.int32, total
            )
            spans = np.fromiter(
                chain.from_iterable(
                    chain.from_iterable(e.offsets[: rule.limit]) for e in encodings
                ),
                np.int64,
                2 * total,
            ).reshape(total, 2)
            special = np.fromiter(
                chain.from_iterable(e.special_tokens_mask[: rule.limit] for e in encodings),
                np.int8,
                total,
            )
            flags = self._flags(texts, kept_valid, ids, spans) | (special.astype(np.int8) * SKIP)
            kept = np.zeros(batch.num_rows, dtype=np.int64)
            kept[valid] = kept_valid
            offsets = np.zeros(batch.num_rows + 1, dtype=np.int64)
            np.cumsum(kept, out=offsets[1:])
            windows = np.zeros(batch.num_rows, dtype=np.int64)
            windows[valid] = rule.windows(kept_valid)
            tokens = cut_windows(offsets, ids, windows, rule, self.head, self.tail)
            token_offsets = pa.ListArray.from_arrays(
                pa.array(offsets.astype(np.int32)),
                pa.StructArray.from_arrays(
                    [
                        pa.array(spans[:, 0].astype(np.int32)),
                        pa.array(spans[:, 1].astype(np.int32)),
                        pa.array(flags),
                    ],
                    fields=list(OFFSETS_TYPE),
                ),
            )
            self.truncated_rows += int(truncated.sum())
            self.counters.rows += batch.num_rows
            self.counters.batches += 1
            self.counters.real_tokens += total
            self.counters.seconds += time.perf_counter() - started
            metadata = {
                b"special_tokens": str(len(self.head) + len(self.tail)).encode(),
                b"head_tokens": str(len(self.head)).encode(),
                b"stride": str(rule.stride).encode(),
            }
            batch = batch.append_column(
                pa.field(self.tokens_column, tokens.type, metadata=metadata), tokens
            )
            yield batch.append_column(self.offsets_column, token_offsets)


class NerStage:
    """Runs a token classifier over `NerTokenizeStage`'s token windows and appends
    `{prefix}{name}_entities` (null where the text was rejected) and, with `redact`,
    `{prefix}{name}_redacted` (the text with each kept entity replaced by `[LABEL]`)."""

    name = "ner"

    def __init__(
        self,
        model_dir: Path,
        text_column: str,
        tokens_column: str,
        name: str = "",
        *,
        prefix: str = "",
        options: NerOptions | None = None,
        runtime: ModelRuntime | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.text_column = text_column
        self.tokens_column = tokens_column
        self.offsets_column = offsets_column_of(tokens_column)
        self.head_name = name
        self.prefix = prefix
        self.options = options or NerOptions()
        self.runtime = runtime or ModelRuntime()
        self.scheme = read_label_scheme(self.model_dir)
        if self.options.labels is not None:
            known = [n for n in self.scheme.entity_names if n != OUTSIDE]
            unknown = [label for label in self.options.labels if label not in known]
            if unknown:
                raise ModelError(
                    f"{self.model_dir} has no entity label(s) {unknown}; its labels are "
                    f"{', '.join(known) or 'none'}"
                )
        self.keep_label = self.scheme.kept(self.options.labels)
        self.token_budget = self.runtime.batch_tokens or 0
        self.counters = StageCounters()
        self.oom_splits = 0
        #: Entities written so far, by label.
        self.entity_counts: dict[str, int] = {}
        self.model: Any = None
        self.device: Any = None
        self.pad_token_id = 0

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.text_column, self.tokens_column, self.offsets_column)

    @property
    def produces(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields())

    def fields(self) -> list[pa.Field]:
        return ner_fields(self.prefix, self.head_name, self.options.redact)

    def setup(self) -> None:
        self.device = runtime_device(self.runtime)  # int8 and onnx: CPU only
        pin_mmap_threshold(self.device.type)  # as the encoders do (see engine.heap)
        if self.runtime.batch_tokens is None:
            self.token_budget = DEFAULT_BATCH_TOKENS.get(self.device.type, 4096)
        self.model = load_runtime_model(self.model_dir, "ner", self.device, self.runtime)
        self.pad_token_id = int(getattr(self.model.config, "pad_token_id", None) or 0)

    def teardown(self) -> None:
        self.model = None
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _run_rows(self, offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Token scores (windows x longest x labels) of one batch; on out-of-memory it is
        split (`engine.oom.forward_splitting`), the halves padded to the longer one."""
        return forward_splitting(
            self, lambda part: self._scores(offsets, values, part), rows, join_padded
        )

    def _scores(self, offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """One forward pass over `rows`: the softmax scores, counted in the stage's counters."""
        import torch

        ids, mask = pad_batch(offsets, values, rows, self.pad_token_id)
        input_ids = torch.from_numpy(ids).to(self.device)
        attention_mask = torch.from_numpy(mask).to(self.device)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        out = logits.float().softmax(dim=-1).cpu().numpy()
        self.counters.batches += 1
        self.counters.real_tokens += int(mask.sum())
        self.counters.padded_tokens += int(mask.size)
        return out

    def token_scores(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """Scores of every row's content tokens (row then position order; one copy per token,
        stitched from the windows) and each row's window count."""
        tokens = batch.column(self.tokens_column)  # row -> token windows -> ids
        metadata = batch.schema.field(self.tokens_column).metadata or {}
        special = int(metadata.get(b"special_tokens", b"0"))
        head = int(metadata.get(b"head_tokens", b"0"))
        stride = int(metadata.get(b"stride", b"1"))
        row_offsets = tokens.offsets.to_numpy()
        windows = np.diff(row_offsets)
        offsets = tokens.values.offsets.to_numpy()
        values = tokens.values.values.to_numpy()
        first = int(row_offsets[0])
        lengths = np.diff(offsets)[first : int(row_offsets[-1])]
        content = np.maximum(lengths - special, 0)
        content_start = np.cumsum(content) - content
        probs = np.zeros((int(content.sum()), len(self.scheme.names)), dtype=np.float32)
        for rows in plan_batches(lengths, self.token_budget, self.max_batch_rows):
            out = self._run_rows(offsets, values, rows + first)
            count = content[rows]
            within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
            source = np.repeat(np.arange(len(rows)), count)
            probs[np.repeat(content_start[rows], count) + within] = out[source, head + within]
        if windows.max(initial=0) > 1:
            window_rows = np.repeat(np.arange(batch.num_rows), windows)
            row_tokens = np.diff(batch.column(self.offsets_column).offsets.to_numpy())
            probs = probs[best_context(window_rows, content, row_tokens, stride)]
        return probs, windows

    @property
    def max_batch_rows(self) -> int:
        return self.runtime.max_batch_rows

    def entities(self, batch: pa.RecordBatch) -> tuple[Entities, np.ndarray]:
        """The kept entities of a batch and which rows had no text to read."""
        probs, windows = self.token_scores(batch)
        offsets = batch.column(self.offsets_column)
        row_tokens = np.diff(offsets.offsets.to_numpy())
        token = offsets.flatten()
        spans = np.stack(
            [token.field("start").to_numpy(), token.field("end").to_numpy()], axis=1
        ).astype(np.int64)
        flags = token.field("flags").to_numpy()
        rows = np.repeat(np.arange(batch.num_rows), row_tokens)
        use = (flags & SKIP) == 0
        found = aggregate(
            probs[use],
            rows[use],
            spans[use],
            (flags[use] & SUBWORD) != 0,
            self.options.aggregation,
            self.scheme,
        )
        return found.take(self.keep_label[found.label]), windows == 0

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            started = time.perf_counter()
            found, missing = self.entities(batch)
            for field_, column in zip(
                self.fields(), self._columns(batch, found, missing), strict=True
            ):
                batch = batch.append_column(field_, column)
            self.counters.rows += batch.num_rows
            self.counters.seconds += time.perf_counter() - started
            yield batch

    def _columns(
        self, batch: pa.RecordBatch, found: Entities, missing: np.ndarray
    ) -> list[pa.Array]:
        names = pa.array(self.scheme.entity_names, pa.string())
        text = as_plain_text(batch.column(self.text_column))
        owners = text.take(pa.array(found.rows)).to_pylist()
        starts, ends = found.starts.tolist(), found.ends.tolist()
        pieces = [t[s:e] for t, s, e in zip(owners, starts, ends, strict=True)]
        values = pa.StructArray.from_arrays(
            [
                pa.array(found.starts.astype(np.int32)),
                pa.array(found.ends.astype(np.int32)),
                names.take(pa.array(found.label)),
                pa.array(found.scores.astype(np.float32)),
                pa.array(pieces, pa.string()),
            ],
            fields=list(ENTITY_TYPE),
        )
        per_row = np.bincount(found.rows, minlength=batch.num_rows)
        offsets = np.zeros(batch.num_rows + 1, dtype=np.int32)
        np.cumsum(per_row, out=offsets[1:])
        entities = pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(missing))
        for label, count in zip(*np.unique(found.label, return_counts=True), strict=True):
            key = self.scheme.entity_names[int(label)]
            self.entity_counts[key] = self.entity_counts.get(key, 0) + int(count)
        if not self.options.redact:
            return [entities]
        return [entities, self._redacted(text, found, offsets, missing)]

    def _redacted(
        self, text: pa.Array, found: Entities, offsets: np.ndarray, missing: np.ndarray
    ) -> pa.Array:
        """The text with each entity replaced by `[LABEL]`; null where the text was rejected."""
        text = pc.cast(text, pa.string())
        rows = np.unique(found.rows)
        originals = text.take(pa.array(rows)).to_pylist()
        labels = self.scheme.entity_names
        replaced = []
        for row, original in zip(rows.tolist(), originals, strict=True):
            parts, at = [], 0
            for i in range(int(offsets[row]), int(offsets[row + 1])):
                start, end = int(found.starts[i]), int(found.ends[i])
                parts += [original[at:start], f"[{labels[int(found.label[i])]}]"]
                at = end
            replaced.append("".join([*parts, original[at:]]))
        has = np.zeros(len(text), dtype=bool)
        has[rows] = True
        out = pc.replace_with_mask(text, pa.array(has), pa.array(replaced, pa.string()))
        return pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), out)
