"""NER stages against transformers' token-classification pipeline on a tiny random BERT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bertetl.engine.encoders import ModelRuntime
from bertetl.engine.long_text import LongTextOptions
from bertetl.engine.ner import AGGREGATIONS, NerOptions, NerStage, best_context, ner_stages
from bertetl.engine.tokenize import ValidateTextStage
from bertetl.errors import ModelError

#: Offsets are characters of the original text: emoji, combining accents, CJK, spaces at both
#: ends, upper case (the tokenizer lowercases), unknown characters, a literal special token.
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "  Café naïve 東京 emoji 🙂 mixed with ascii words  ",
    "cafe\u0301 and nai\u0308ve with combining accents",
    "東京 data teams 🙂🙂 keep text",
    "embedding columns and classification columns are added to every row",
    "Unicode TEXT ça ☃ ⛄ Ω [SEP] numbers 123 456 ! ? , .",
    "x",
    "   spaces   between   words   ",
    "reviews tickets and articles " * 12,  # 60 words: truncated at 128 tokens
]


@pytest.fixture(scope="module")
def reference(tiny_token_classifier_dir: Path):
    """transformers' own model and tokenizer for the same folder."""
    from transformers import AutoTokenizer, BertForTokenClassification

    model = BertForTokenClassification.from_pretrained(tiny_token_classifier_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_token_classifier_dir)


def run_ner(
    model_dir: Path,
    texts: list[str | None],
    options: NerOptions,
    long_text: LongTextOptions | None = None,
    max_length: int | None = None,
    batch_tokens: int | None = 256,
) -> pa.Table:
    validate = ValidateTextStage("text")
    tokenize, ner = ner_stages(
        model_dir,
        "text",
        "people",
        options=options,
        long_text=long_text,
        max_length=max_length,
        runtime=ModelRuntime(device="cpu", batch_tokens=batch_tokens, max_batch_rows=4),
    )
    tokenize.setup()
    ner.setup()
    batches = pa.table({"text": pa.array(texts, pa.string())}).to_batches(max_chunksize=5)
    out = pa.Table.from_batches(list(ner(tokenize(validate(batches)))))
    tokenize.teardown()
    ner.teardown()
    return out


def assert_same(ours: list[dict] | None, expected: list[dict], text: str) -> None:
    assert ours is not None
    got = [(e["start"], e["end"], e["label"]) for e in ours]
    want = [(int(e["start"]), int(e["end"]), e["entity_group"]) for e in expected]
    assert got == want, text
    for mine, theirs in zip(ours, expected, strict=True):
        assert mine["score"] == pytest.approx(float(theirs["score"]), abs=1e-4)
        assert mine["text"] == text[mine["start"] : mine["end"]]


@pytest.mark.parametrize("strategy", AGGREGATIONS)
def test_entities_equal_the_transformers_pipeline(
    tiny_token_classifier_dir: Path, reference, strategy: str
) -> None:
    import warnings

    from transformers import pipeline

    model, tokenizer = reference
    ner = pipeline(
        "token-classification", model=model, tokenizer=tokenizer, aggregation_strategy=strategy
    )
    out = run_ner(
        tiny_token_classifier_dir, [*TEXTS, None, "   "], NerOptions(aggregation=strategy)
    )
    entities = out.column("people_entities").to_pylist()
    assert entities[-2:] == [None, None]  # rejected text: no entities value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ner(TEXTS)
    assert sum(len(e) for e in expected) > 20  # the random model does find entities
    assert len({e["entity_group"] for row in expected for e in row}) >= 2
    for text, ours, theirs in zip(TEXTS, entities, expected, strict=False):
        assert_same(ours, theirs, text)


def test_words_differ_from_tokens_somewhere(tiny_token_classifier_dir: Path) -> None:
    """The word strategies are exercised: some word has subwords that disagree."""
    simple = run_ner(tiny_token_classifier_dir, TEXTS, NerOptions("simple")).column(
        "people_entities"
    )
    first = run_ner(tiny_token_classifier_dir, TEXTS, NerOptions("first")).column("people_entities")
    assert simple.to_pylist() != first.to_pylist()


def test_label_subset_and_redaction(tiny_token_classifier_dir: Path) -> None:
    every = run_ner(tiny_token_classifier_dir, TEXTS, NerOptions("first")).column("people_entities")
    out = run_ner(
        tiny_token_classifier_dir, [*TEXTS, None], NerOptions("first", labels=("LOC",), redact=True)
    )
    kept = out.column("people_entities").to_pylist()
    for row, (all_, some) in enumerate(zip(every.to_pylist(), kept, strict=False)):
        assert some == [e for e in all_ if e["label"] == "LOC"]
        redacted = TEXTS[row]
        for e in reversed(some):  # independent: splice from the end
            redacted = redacted[: e["start"]] + "[LOC]" + redacted[e["end"] :]
        assert out.column("people_redacted")[row].as_py() == redacted
    assert out.column("people_redacted")[len(TEXTS)].as_py() is None
    assert any(kept)


def _window_reference(model, tokenizer, text: str, width: int, overlap: int, max_windows: int):
    """Per-token logits of `text` by the documented rule, with plain transformers: windows of
    `width` content tokens every `width - overlap`, each run alone; a token takes the window
    where min(tokens before, tokens after) is largest (a text edge counts as unlimited)."""
    import torch

    enc = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    stride = width - overlap
    ids = enc["input_ids"]
    count = 1 + max(0, -(-(len(ids) - width) // stride))
    count = min(count, max_windows)
    ids = ids[: (count - 1) * stride + width]
    best: dict[int, tuple[int, np.ndarray]] = {}
    for k in range(count):
        piece = ids[k * stride : k * stride + width]
        with torch.no_grad():
            window = [tokenizer.cls_token_id, *piece, tokenizer.sep_token_id]
            logits = model(input_ids=torch.tensor([window])).logits[0, 1:-1].numpy()
        for j in range(len(piece)):
            p = k * stride + j
            left = 10**9 if k == 0 else j
            right = 10**9 if k * stride + len(piece) >= len(ids) else len(piece) - 1 - j
            if p not in best or min(left, right) > best[p][0]:
                best[p] = (min(left, right), logits[j])
    logits = np.stack([best[p][1] for p in range(len(ids))])
    return {
        "logits": torch.tensor(logits)[None],
        "input_ids": torch.tensor(ids)[None],
        "offset_mapping": torch.tensor(enc["offset_mapping"][: len(ids)])[None],
        "special_tokens_mask": torch.tensor(enc["special_tokens_mask"][: len(ids)])[None],
        "sentence": text,
        "is_last": True,
    }


@pytest.mark.parametrize("strategy", ["simple", "average"])
def test_long_text_windows_match_a_plain_transformers_reference(
    tiny_token_classifier_dir: Path, reference, strategy: str
) -> None:
    """Windows of 14 content tokens overlapping by 6; aggregation by transformers' own
    `postprocess` over the stitched logits, so each entity in an overlap appears once."""
    from transformers import pipeline

    model, tokenizer = reference
    ner = pipeline(
        "token-classification", model=model, tokenizer=tokenizer, aggregation_strategy=strategy
    )
    texts = [TEXTS[1] * 6, TEXTS[4] + " " + TEXTS[0] * 2, "short text", TEXTS[8]]
    options = LongTextOptions("window", window_overlap=6, max_windows=5)
    out = run_ner(tiny_token_classifier_dir, texts, NerOptions(strategy), options, max_length=16)
    assert len(tokenizer(texts[0], add_special_tokens=False)["input_ids"]) > 14 + 4 * 8
    assert len(tokenizer(texts[1], add_special_tokens=False)["input_ids"]) > 14 + 8
    found = out.column("people_entities").to_pylist()
    assert len(found[0]) > 3 and len(found[1]) > 3
    for text, ours in zip(texts, found, strict=True):
        stitched = _window_reference(model, tokenizer, text, 14, 6, 5)
        assert_same(
            ours, ner.postprocess([stitched], ner._postprocess_params["aggregation_strategy"]), text
        )


def test_best_context_picks_the_middle_of_overlaps() -> None:
    # one row of 10 tokens, windows of 4 every 3 (overlap 1); one row of 3 tokens, one window
    rows = np.array([0, 0, 0, 1])
    content = np.array([4, 4, 4, 3])
    chosen = best_context(rows, content, np.array([10, 3]), stride=3)
    # copies: w0 = p0..3 (0..3), w1 = p3..6 (4..7), w2 = p6..9 (8..11), w3 = row 1 (12..14)
    # p3: w0 right 0 vs w1 left 0 -> tie, earlier; p6: w1 right 0, w2 left 0 -> earlier
    assert chosen.tolist() == [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13, 14]


def test_refuses_a_sequence_classifier_before_any_model_work(
    tiny_classifier_dir: Path, tiny_token_classifier_dir: Path
) -> None:
    with pytest.raises(ModelError, match="not a token-classification"):
        NerStage(tiny_classifier_dir, "text", "__bertetl_tokens_x")
    with pytest.raises(ModelError, match=r"no entity label\(s\) \['DATE'\]"):
        NerStage(
            tiny_token_classifier_dir,
            "text",
            "__bertetl_tokens_x",
            options=NerOptions(labels=("DATE",)),
        )
    with pytest.raises(ValueError, match="aggregation"):
        NerOptions(aggregation="none")
    config = json.loads((tiny_token_classifier_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]


def test_schema_and_counters(tiny_token_classifier_dir: Path) -> None:
    out = run_ner(tiny_token_classifier_dir, TEXTS, NerOptions(redact=True), batch_tokens=64)
    assert out.schema.field("people_entities").type == pa.list_(
        pa.struct(
            [
                ("start", pa.int32()),
                ("end", pa.int32()),
                ("label", pa.string()),
                ("score", pa.float32()),
                ("text", pa.string()),
            ]
        )
    )
    assert out.schema.field("people_redacted").type == pa.string()
    assert out.num_rows == len(TEXTS)


def test_out_of_memory_splits_batches_with_the_pipeline_entities(
    tiny_token_classifier_dir: Path, reference, monkeypatch
) -> None:
    """A batch of more than one window runs out of memory: it is split down to single
    windows (padded to different lengths), counted, and the entities stay the pipeline's."""
    import warnings

    import torch
    from transformers import BertForTokenClassification, pipeline

    model, tokenizer = reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pipeline(
            "token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple"
        )(TEXTS)
    real_forward = BertForTokenClassification.forward

    def forward_that_runs_out_of_memory(self, *args, **kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(BertForTokenClassification, "forward", forward_that_runs_out_of_memory)
    tokenize, ner = ner_stages(
        tiny_token_classifier_dir,
        "text",
        runtime=ModelRuntime(device="cpu", batch_tokens=1024, max_batch_rows=4),
    )
    tokenize.setup()
    ner.setup()
    batches = pa.table({"text": TEXTS}).to_batches(max_chunksize=5)
    out = pa.Table.from_batches(list(ner(tokenize(ValidateTextStage("text")(batches)))))
    assert ner.oom_splits >= 3 and ner.token_budget < 1024
    assert ner.counters.batches == len(TEXTS)  # only the forward passes that ran
    for text, ours, theirs in zip(TEXTS, out.column("entities").to_pylist(), expected, strict=True):
        assert_same(ours, theirs, text)
