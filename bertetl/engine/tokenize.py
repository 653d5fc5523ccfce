"""Per-row text checks and fast-tokenizer calls, one window of rows at a time."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertetl.engine.long_text import LongTextOptions, WindowRule, cut_windows, window_spans
from bertetl.engine.model_files import max_length_for
from bertetl.results import StageCounters
from bertetl.schema import (
    ENRICH_ERROR,
    SPANS_PREFIX,
    STATS_PREFIX,
    TOKENS_PREFIX,
    token_stats_fields,
)

NULL_TEXT = "text is null"
EMPTY_TEXT = "text is empty"
BLANK_TEXT = "text is whitespace-only"
#: A string column's bytes are meant to be UTF-8, but a Parquet writer can store any bytes.
INVALID_TEXT = "text is not valid UTF-8"
#: Only characters the tokenizer drops (zero-width, control, format characters): the model
#: would see nothing but its special tokens, and give every such row the same output.
NO_TOKENS = "text has no tokens"


def as_plain_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array with dictionaries decoded (a text column becomes (large_)string)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def without_invalid_utf8(text: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """`text` (a plain string array) with the rows that are not valid UTF-8 nulled, and which
    rows those are (None when every row is valid: one pass over the bytes, the usual case).
    Such rows would stop pyarrow's string kernels, polars and the tokenizer alike; the
    original bytes stay in the row's own column, which is written out unchanged."""
    try:
        text.validate(full=True)
        return text, None
    except pa.ArrowInvalid:
        pass
    raw = text.view(pa.large_binary() if pa.types.is_large_string(text.type) else pa.binary())
    invalid = np.zeros(len(raw), dtype=bool)
    for row, value in enumerate(raw.to_pylist()):  # only for a window that holds such a row
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                invalid[row] = True
    return pc.if_else(pa.array(invalid), pa.scalar(None, text.type), text), invalid


def text_problems(text: pa.Array) -> pa.Array:
    """Per row: why the text cannot be encoded (null, empty, whitespace-only), else null."""
    length = pc.utf8_length(text)
    trimmed_length = pc.utf8_length(pc.utf8_trim_whitespace(text))
    return pc.case_when(
        pc.make_struct(
            pc.is_null(text),
            pc.fill_null(pc.equal(length, 0), False),
            pc.fill_null(pc.equal(trimmed_length, 0), False),
        ),
        pa.scalar(NULL_TEXT),
        pa.scalar(EMPTY_TEXT),
        pa.scalar(BLANK_TEXT),
        pa.scalar(None, pa.string()),
    )


class ValidateTextStage:
    """Appends `enrich_error` saying why a row's text cannot be encoded (null when it can)."""

    name = "validate"

    def __init__(self, text_column: str, prefix: str = "") -> None:
        self.text_column = text_column
        self.error_column = prefix + ENRICH_ERROR
        self.counters = StageCounters()

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.text_column,)

    @property
    def produces(self) -> tuple[str, ...]:
        return (self.error_column,)

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            started = time.perf_counter()
            text, invalid = without_invalid_utf8(as_plain_text(batch.column(self.text_column)))
            problems = text_problems(text)
            if invalid is not None:
                problems = pc.if_else(pa.array(invalid), pa.scalar(INVALID_TEXT), problems)
            out = batch.append_column(self.error_column, problems)
            self.counters.rows += batch.num_rows
            self.counters.batches += 1
            self.counters.seconds += time.perf_counter() - started
            yield out


#: Characters tokenized first per content token a row may need: rows longer than
#: `limit * CHARS_PER_TOKEN + PREFIX_SLACK` characters are tokenized from a prefix (grown
#: until it provably holds the tokens the model will see: `first_tokens`), so a 10 MB text
#: costs about what its first windows do. English runs 4-5 characters per token.
CHARS_PER_TOKEN = 8
PREFIX_SLACK = 256
#: Characters per slice when counting a long text's tokens for `--token-stats`.
COUNT_SLICE = 1 << 16


@dataclass
class RowTokens:
    """One row's content tokens (at most the rule's limit) and what is known of the rest."""

    ids: list[int]
    total: int  # content tokens of the whole text (or of `ids` when not counted)
    truncated: bool
    #: Each of `ids`' character span in the text (with `spans`), else None.
    offsets: list[tuple[int, int]] | None = None


class TokenizeStage:
    """Tokenizes the valid rows' text with the model's fast tokenizer into token windows.

    Appends a `list<list<int32>>` token column (row -> token windows -> ids with the model's
    special tokens; no windows for rows that `ValidateTextStage` rejected), which the infer
    stage consumes and drops, and a per-row stats column (content tokens, windows, truncated)
    that the pipeline turns into `--token-stats` columns or drops. With `spans`
    (`--emit windows`), also each window's character span in the text (`SPANS_PREFIX`).
    """

    name = "tokenize"

    def __init__(
        self,
        model_dir: Path,
        text_column: str,
        error_column: str,
        tokens_key: str,
        max_length: int | None = None,
        long_text: LongTextOptions | None = None,
        prompt: str = "",
        spans: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.spans = spans
        self.spans_column = SPANS_PREFIX + tokens_key
        #: Text put before each row's text (sentence-transformers' prompt), tokenized with it.
        self.prompt = prompt
        #: Content tokens the prompt alone has (not counted in a row's token stats).
        self.prompt_tokens = 0
        self.text_column = text_column
        self.error_column = error_column
        self.tokens_column = TOKENS_PREFIX + tokens_key
        self.stats_column = STATS_PREFIX + tokens_key
        self.max_length = max_length_for(self.model_dir, max_length)
        self.long_text = long_text or LongTextOptions()
        self.truncated_rows = 0
        self.counters = StageCounters()
        self.rule: WindowRule | None = None
        self.head: list[int] = []
        self.tail: list[int] = []
        self._tokenizer: Any = None

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.text_column, self.error_column)

    @property
    def produces(self) -> tuple[str, ...]:
        spans = (self.spans_column,) if self.spans else ()
        return (self.tokens_column, self.stats_column, *spans)

    def setup(self, snapshot: TokenizerSnapshot | None = None) -> None:
        """Load the tokenizer from the model folder, or build it from `snapshot` (what
        another process loaded: no transformers import, so no torch, in a worker)."""
        from bertetl.errors import ModelError

        backend = (snapshot or load_tokenizer(self.model_dir)).build()
        self.head, self.tail = special_tokens(backend)
        options = self.long_text
        try:
            self.rule = WindowRule(
                self.max_length - len(self.head) - len(self.tail),
                options.window_overlap if options.long_text == "window" else 0,
                options.max_windows if options.long_text == "window" else 1,
            )
        except ValueError as e:
            raise ModelError(f"{self.model_dir}: {e}") from e
        self._tokenizer = backend
        if self.prompt:
            self.prompt_tokens = len(backend.encode(self.prompt, add_special_tokens=False).ids)

    @property
    def loaded(self) -> bool:
        return self._tokenizer is not None

    def snapshot(self) -> TokenizerSnapshot:
        """The loaded tokenizer, for `setup(snapshot)` in another process."""
        if self._tokenizer is None:
            raise RuntimeError("TokenizeStage used before setup()")
        return TokenizerSnapshot.of(self._tokenizer)

    def teardown(self) -> None:
        self._tokenizer = None

    def _rule(self) -> WindowRule:
        if self._tokenizer is None or self.rule is None:
            raise RuntimeError("TokenizeStage used before setup()")
        return self.rule

    def content_tokens(self, texts: list[str]) -> list[RowTokens]:
        """Each text's first `rule.limit` content tokens, its token count and whether the
        model misses some of it. Long texts are tokenized from a prefix (`first_tokens`);
        short ones through the Rust tokenizer's `encode_batch_fast` (no character offsets):
        the ids `tokenizer(texts)` gives, ~20% sooner on one core (BENCHMARKS.md, host path)."""
        limit = self._rule().limit
        if self.prompt:  # as sentence-transformers' encode: the prompt and the text as one
            texts = [self.prompt + text for text in texts]
        with_offsets = functools.partial(self._tokenizer.encode_batch, add_special_tokens=False)
        ids_only = (
            with_offsets  # the spans need the offsets of short texts too
            if self.spans
            else functools.partial(ids_only_encoder(self._tokenizer), add_special_tokens=False)
        )
        rows = []
        for text, first in zip(
            texts, first_tokens(texts, limit, with_offsets, ids_only), strict=True
        ):
            total = first.settled
            if not first.complete and self.long_text.token_stats:
                total += self._count(text, first.encoding.offsets[first.settled][0])
            total = max(total - self.prompt_tokens, 0)  # the text's own tokens
            offsets = first.encoding.offsets[:limit] if self.spans else None
            rows.append(RowTokens(first.encoding.ids[:limit], total, first.truncated, offsets))
        return rows

    def _count(self, text: str, start: int) -> int:
        """Content tokens of `text[start:]` (`start` at a word's start), a slice at a time."""
        total = 0
        size = COUNT_SLICE
        while start < len(text):
            end = start + size
            encoding = self._tokenizer.encode(text[start:end], add_special_tokens=False)
            if end >= len(text):
                return total + len(encoding.ids)
            safe = _before_last_word(encoding.word_ids)
            if safe == 0 and encoding.ids:  # one word fills the slice: take a bigger one
                size *= 2
                continue
            total += safe
            start += encoding.offsets[safe][0] if safe < len(encoding.ids) else size
            size = COUNT_SLICE
        return total

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text's first token window, special tokens included."""
        rule = self._rule()
        return [self.head + row.ids[: rule.width] + self.tail for row in self.content_tokens(texts)]

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            started = time.perf_counter()
            rule = self._rule()
            valid = np.flatnonzero(
                pc.is_null(batch.column(self.error_column)).to_numpy(zero_copy_only=False)
            )
            text = as_plain_text(batch.column(self.text_column)).take(pa.array(valid))
            rows = self.content_tokens(text.to_pylist()) if len(valid) else []
            kept = np.zeros(batch.num_rows, dtype=np.int64)
            kept[valid] = [len(row.ids) for row in rows]
            offsets = np.zeros(batch.num_rows + 1, dtype=np.int64)
            np.cumsum(kept, out=offsets[1:])
            values = np.fromiter(
                chain.from_iterable(row.ids for row in rows), dtype=np.int32, count=int(offsets[-1])
            )
            total = np.zeros(batch.num_rows, dtype=np.int64)
            total[valid] = [row.total for row in rows]
            no_tokens = np.zeros(batch.num_rows, dtype=bool)
            no_tokens[valid] = total[valid] == 0
            windows = np.zeros(batch.num_rows, dtype=np.int64)
            windows[valid] = rule.windows(kept[valid])
            windows[no_tokens] = 0
            tokens = cut_windows(offsets, values, windows, rule, self.head, self.tail)
            truncated = np.zeros(batch.num_rows, dtype=bool)
            truncated[valid] = [row.truncated for row in rows]
            invalid = windows == 0
            stats = pa.StructArray.from_arrays(
                [
                    pa.array(total.astype(np.int32), mask=invalid),
                    pa.array(windows.astype(np.int16), mask=invalid),
                    pa.array(truncated, mask=invalid),
                ],
                fields=list(token_stats_fields("")),
            )
            self.truncated_rows += int(truncated.sum())
            self.counters.rows += batch.num_rows
            self.counters.batches += 1
            self.counters.real_tokens += int(offsets[-1])
            self.counters.seconds += time.perf_counter() - started
            if no_tokens.any():
                error = batch.schema.get_field_index(self.error_column)
                errors = pc.if_else(pa.array(no_tokens), pa.scalar(NO_TOKENS), batch.column(error))
                batch = batch.set_column(error, self.error_column, errors)
            special = {b"special_tokens": str(len(self.head) + len(self.tail)).encode()}
            if self.prompt:  # the leading tokens that are the prompt's (its special ones too)
                special[b"prompt_tokens"] = str(len(self.head) + self.prompt_tokens).encode()
            batch = batch.append_column(
                pa.field(self.tokens_column, tokens.type, metadata=special), tokens
            )
            if self.spans:
                spans = self._spans(rows, offsets, windows, rule)
                batch = batch.append_column(self.spans_column, spans)
            yield batch.append_column(self.stats_column, stats)

    def _spans(
        self, rows: list[RowTokens], offsets: np.ndarray, windows: np.ndarray, rule: WindowRule
    ) -> pa.ListArray:
        """Each window's character span (`long_text.window_spans`), from the rows' token
        offsets (`offsets`: the content tokens' offsets per row of the batch)."""
        count = int(offsets[-1])
        spans = chain.from_iterable(row.offsets or () for row in rows)
        pairs = np.fromiter(chain.from_iterable(spans), dtype=np.int64, count=2 * count)
        pairs = pairs.reshape(count, 2)
        return window_spans(offsets, pairs[:, 0], pairs[:, 1], windows, rule)


@dataclass(frozen=True)
class FirstTokens:
    """A text's encoding whose first `limit` content tokens are the whole text's."""

    #: The encoding of the whole text (`complete`) or of a prefix of it.
    encoding: Any
    #: Whether the whole text has more than `limit` content tokens.
    truncated: bool
    #: Whether `encoding` is of the whole text.
    complete: bool
    #: The encoding's first tokens that are the whole text's: all of them when `complete`,
    #: else those before the prefix's last word.
    settled: int


def first_tokens(
    texts: list[str],
    limit: int,
    encode: Callable[[list[str]], list[Any]],
    encode_whole: Callable[[list[str]], list[Any]] | None = None,
) -> list[FirstTokens]:
    """Each text's encoding, at least its first `limit` content tokens exactly the whole text's.

    `encode` gives texts' encodings (content tokens: no special tokens) with character
    offsets and word ids (a Rust tokenizer's `encode_batch`, or transformers' tokenizer call
    with offsets); `encode_whole` (default `encode`) encodes the texts short enough to take
    whole, and may leave offsets out. Texts longer than `limit * CHARS_PER_TOKEN +
    PREFIX_SLACK` characters are encoded from a prefix of that many, grown 4x until settled,
    so a 10 MB text costs about what its first windows do.

    Why a prefix gives the same tokens as the whole text: the tokenizer splits text into
    words (its pre-tokenizer: whitespace and punctuation for BERT) and tokenizes each word
    on its own, after a normalizer that works character by character. Cutting the text can
    only change the word the cut falls in, which is the prefix's last word; every token of
    an earlier word is the same as in the whole text. So the prefix settles the row once
    more than `limit` tokens come before its last word (the row is truncated), or exactly
    `limit` do and the last word has tokens too (the whole text then has more than `limit`).
    Otherwise the prefix grows; at the text's full length it is the whole text.
    """
    cutoff = limit * CHARS_PER_TOKEN + PREFIX_SLACK
    out: list[FirstTokens | None] = [None] * len(texts)
    short = [i for i, text in enumerate(texts) if len(text) <= cutoff]
    if short:
        whole = encode_whole or encode
        encoded = whole(texts if len(short) == len(texts) else [texts[i] for i in short])
        for i, encoding in zip(short, encoded, strict=True):
            out[i] = FirstTokens(encoding, len(encoding.ids) > limit, True, len(encoding.ids))
    pending = [i for i, text in enumerate(texts) if len(text) > cutoff]
    size = cutoff
    while pending:
        still = []
        encoded = encode([texts[i][:size] for i in pending])
        for i, encoding in zip(pending, encoded, strict=True):
            if size >= len(texts[i]):
                out[i] = FirstTokens(encoding, len(encoding.ids) > limit, True, len(encoding.ids))
                continue
            safe = _before_last_word(encoding.word_ids)
            if safe > limit or (safe == limit and len(encoding.ids) > safe):
                out[i] = FirstTokens(encoding, True, False, safe)
            else:
                still.append(i)
        pending = still
        size *= 4
    return [first for first in out if first is not None]


def ids_only_encoder(backend: Any) -> Any:
    """The Rust tokenizer's batch encode that skips character offsets (`encode_batch_fast`,
    tokenizers >= 0.20), else `encode_batch`: the one the stage uses for short texts."""
    return getattr(backend, "encode_batch_fast", backend.encode_batch)


def _before_last_word(word_ids: list[int | None]) -> int:
    """Tokens before the first token of the last word (all tokens when there are none)."""
    if not word_ids:
        return 0
    last = word_ids[-1]
    index = len(word_ids)
    while index and word_ids[index - 1] == last:
        index -= 1
    return index


def special_tokens(backend: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one sequence ([CLS] and [SEP] for BERT),
    read off its own post-processing of a one-word text (`backend`: a Rust tokenizer with
    no truncation or padding, as `TokenizerSnapshot.build` makes)."""
    encoded = backend.encode("a", add_special_tokens=True)
    ids, special = encoded.ids, encoded.special_tokens_mask
    head = 0
    while head < len(ids) and special[head]:
        head += 1
    tail = len(ids)
    while tail > head and special[tail - 1]:
        tail -= 1
    return list(ids[:head]), list(ids[tail:])


@dataclass(frozen=True)
class TokenizerSnapshot:
    """A loaded fast tokenizer's whole Rust pipeline (normalizer, pre-tokenizer, model,
    post-processor, added tokens) as transformers built it from the model folder, in the
    `tokenizer.json` format. Worker processes (the tokenizer pool, Ray's tokenize actors)
    build their tokenizer from it: the same ids by construction, without importing
    transformers and, through it, torch (~3.5 s of CPU and ~230 MB per worker)."""

    pipeline: str
    #: transformers' `split_special_tokens` (a literal "[SEP]" in a text is split as text),
    #: a flag of the Rust tokenizer that its `tokenizer.json` does not keep
    encode_special_tokens: bool = False

    @classmethod
    def of(cls, backend: Any) -> TokenizerSnapshot:
        """The snapshot of a loaded `tokenizers.Tokenizer`."""
        return cls(backend.to_str(), bool(getattr(backend, "encode_special_tokens", False)))

    def build(self) -> Any:
        """A `tokenizers.Tokenizer` with truncation and padding off (a `tokenizer.json` may
        carry both, e.g. all-MiniLM-L6-v2's 128; rows are cut here, by `WindowRule`)."""
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(self.pipeline)
        backend.no_truncation()
        backend.no_padding()
        if self.encode_special_tokens:
            backend.encode_special_tokens = True
        return backend


def load_fast_tokenizer(model_dir: Path) -> Any:
    """The model folder's fast tokenizer, loaded by `AutoTokenizer` (local files only);
    `ModelError` when it cannot load or has no fast tokenizer."""
    from transformers import AutoTokenizer

    from bertetl.errors import ModelError

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the tokenizer of {model_dir}: {e}") from e
    if not tokenizer.is_fast:
        raise ModelError(f"{model_dir}: no fast tokenizer (tokenizer.json) could be built")
    return tokenizer


def load_tokenizer(model_dir: Path) -> TokenizerSnapshot:
    """The model folder's fast tokenizer (`load_fast_tokenizer`), as a snapshot."""
    return TokenizerSnapshot.of(load_fast_tokenizer(model_dir).backend_tokenizer)
