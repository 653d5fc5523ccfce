"""CoNLL files (one `token<TAB>tag` per line, a blank line between sentences, BIO tags) to the
table `bertetl train --task token-classification` reads: `text` (the tokens joined by single
spaces) and `spans` (`list<struct<start:int32, end:int32, label:string>>`, character offsets
into `text`).

    python -m bertetl.training.conll wnut17train.conll train.parquet --max-sentences 1500

Tags are read as conlleval does: `B-X` starts an entity, `I-X` continues one of type `X`
(an `I-X` after `O` or after another type starts a new one), anything else (`O`) is outside.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertetl.errors import InputError

SPAN_TYPE = pa.struct(
    [pa.field("start", pa.int32()), pa.field("end", pa.int32()), pa.field("label", pa.string())]
)
TEXT = "text"
SPANS = "spans"

Sentence = tuple[list[str], list[str]]


def read_conll(path: str | Path) -> Iterator[Sentence]:
    """The sentences of a CoNLL file as (tokens, tags); the tag is the last column."""
    tokens: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if not line.strip() or not parts[0].strip():
                if tokens:
                    yield tokens, tags
                tokens, tags = [], []
                continue
            if len(parts) < 2:
                raise InputError(f"{path}:{number}: expected `token<TAB>tag`, got {line!r}")
            tokens.append(parts[0])
            tags.append(parts[-1].strip())
    if tokens:
        yield tokens, tags


def sentence_spans(tokens: list[str], tags: list[str]) -> tuple[str, list[dict]]:
    """The sentence as text (tokens joined by spaces) and its entities as character spans."""
    spans: list[dict] = []
    at = 0
    current: dict | None = None
    for token, tag in zip(tokens, tags, strict=True):
        start, end = at, at + len(token)
        at = end + 1
        kind = tag[2:] if tag.startswith(("B-", "I-")) else None
        if kind is not None and tag.startswith("I-") and current and current["label"] == kind:
            current["end"] = end
            continue
        current = None
        if kind is not None:
            current = {"start": start, "end": end, "label": kind}
            spans.append(current)
    return " ".join(tokens), spans


def sentences_table(sentences: Iterable[Sentence]) -> pa.Table:
    """`text` and `spans` columns from (tokens, tags) sentences."""
    texts, spans = [], []
    for tokens, tags in sentences:
        text, entities = sentence_spans(tokens, tags)
        texts.append(text)
        spans.append(entities)
    return pa.table(
        {TEXT: pa.array(texts, pa.string()), SPANS: pa.array(spans, pa.list_(SPAN_TYPE))}
    )


def conll_to_parquet(
    source: str | Path, target: str | Path, max_sentences: int | None = None, seed: int = 0
) -> int:
    """Write `source`'s sentences (a seeded sample of `max_sentences`, kept in file order) as
    a Parquet table; returns the sentences written."""
    sentences = list(read_conll(source))
    if max_sentences is not None and max_sentences < len(sentences):
        keep = sorted(random.Random(seed).sample(range(len(sentences)), max_sentences))
        sentences = [sentences[i] for i in keep]
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(sentences_table(sentences), target)
    return len(sentences)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="CoNLL file (token<TAB>tag, blank line between sentences)")
    parser.add_argument("target", help="Parquet file to write")
    parser.add_argument("--max-sentences", type=int, default=None, help="seeded sample size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    count = conll_to_parquet(args.source, args.target, args.max_sentences, args.seed)
    print(f"wrote {count} sentences to {args.target}")


if __name__ == "__main__":
    main()
