"""Every `EngineConfig` field says whether it changes the outputs, and the config hash read
from those declarations is the hash the hand-kept lists gave (users' manifests hold it)."""

from __future__ import annotations

import hashlib
import json
import typing
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel

from bertetl.config import EngineConfig
from bertetl.io.manifest import config_hash
from bertetl.output_options import OUTPUT, SPEED, Kind, added_later, only_with, output_effects

# The lists io/manifest.py kept by hand until 12ea008, the reference for the declarations.
OUTPUT_OPTIONS = (
    "text_column",
    "dtype",
    "quantize",
    "max_length",
    "prefix",
    "include_scores",
    "multi_label_threshold",
)
LATER_OUTPUT_OPTIONS: dict[str, object] = {
    "long_text": "truncate",
    "token_stats": False,
    "backend": "torch",
}
WINDOW_OPTIONS = ("window_overlap", "max_windows")
ZERO_SHOT_OPTIONS = ("zero_shot_template", "zero_shot_temperature", "zero_shot_min_score")
NER_OPTIONS = ("ner_aggregation", "ner_labels", "redact")
KINDS = typing.get_args(Kind)


def hash_as_before(config: EngineConfig, models: dict[str, str]) -> str:
    """`config_hash` as it was written at 12ea008, from the lists above."""
    payload = {name: getattr(config, name) for name in OUTPUT_OPTIONS}
    for name, earlier in LATER_OUTPUT_OPTIONS.items():
        if getattr(config, name) != earlier:
            payload[name] = getattr(config, name)
    if config.long_text == "window":
        payload.update({name: getattr(config, name) for name in WINDOW_OPTIONS})
    if config.classify:
        payload["classify"] = [head.name for head in config.classify]
    if config.zero_shot:
        payload["zero_shot"] = [head.model_dump(mode="json") for head in config.zero_shot]
        payload.update({name: getattr(config, name) for name in ZERO_SHOT_OPTIONS})
    if config.ner:
        payload["ner"] = [head.name for head in config.ner]
        payload.update({name: getattr(config, name) for name in NER_OPTIONS})
    payload["models"] = dict(sorted(models.items()))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def test_every_engine_option_is_classified() -> None:
    """Fails when a new `EngineConfig` field does not say how it bears on the outputs, or
    when a classification drifts from the lists the hashes in users' manifests came from
    (fields added since may join any kind but `OUTPUT`, which would change every hash)."""
    effects = output_effects(EngineConfig)
    assert set(effects) == set(EngineConfig.model_fields)
    kinds = {kind: {n: e for n, e in effects.items() if e.kind == kind} for kind in KINDS}
    assert set(kinds["output"]) == set(OUTPUT_OPTIONS), "a new option must be added_later(...)"
    later = {name: effect.earlier for name, effect in kinds["later"].items()}
    assert (
        later.items()
        >= {**LATER_OUTPUT_OPTIONS, "classify": (), "zero_shot": (), "ner": ()}.items()
    )
    groups = {name: effect.group for name, effect in kinds["group"].items()}
    assert (
        groups.items()
        >= {
            **dict.fromkeys(WINDOW_OPTIONS, "long_text"),
            **dict.fromkeys(ZERO_SHOT_OPTIONS, "zero_shot"),
            **dict.fromkeys(NER_OPTIONS, "ner"),
        }.items()
    )
    assert set(kinds["model"]) >= {"embed_model", "classify_model", "zero_shot_model"}
    assert set(kinds["speed"]) >= {"device", "batch_tokens", "window_rows", "executor"}


def test_a_field_without_an_effect_or_grouped_wrongly_is_refused() -> None:
    class Unclassified(BaseModel):
        text: Annotated[str, OUTPUT] = ""
        batch: int = 1

    with pytest.raises(TypeError, match=r"Unclassified\.batch declares 0 output effects"):
        output_effects(Unclassified)

    class Twice(BaseModel):
        text: Annotated[str, OUTPUT, SPEED] = ""

    with pytest.raises(TypeError, match=r"Twice\.text declares 2"):
        output_effects(Twice)

    class GroupedUnderAnOutput(BaseModel):
        mode: Annotated[str, OUTPUT] = "a"
        width: Annotated[int, only_with("mode")] = 1
        later: Annotated[bool, added_later(False)] = False

    with pytest.raises(TypeError, match=r"width is only_with\('mode'\)"):
        output_effects(GroupedUnderAnOutput)


def _configs(labels: Path) -> list[EngineConfig]:
    base = {"text_column": "text", "embed_model": "m"}
    variants: list[dict[str, object]] = [
        {},
        {"long_text": "window"},
        {"long_text": "window", "window_overlap": 3, "max_windows": 5},
        {"window_overlap": 7, "max_windows": 2},  # not windowed: no effect
        {"token_stats": True},
        {"backend": "onnx"},
        {"classify": ("t=/m/x", "u=/m/y"), "include_scores": True},
        {"zero_shot": ("a,b",)},
        {
            "zero_shot": (f"k={labels}",),
            "zero_shot_template": "about {}",
            "zero_shot_temperature": 0.1,
            "zero_shot_min_score": 0.2,
            "zero_shot_model": "/z",
        },
        {"ner": ("p=/n",)},
        {"ner": ("p=/n",), "ner_labels": "PER,ORG", "redact": True, "ner_aggregation": "max"},
        {"prefix": "p_", "multi_label_threshold": 0.2, "dtype": "float16", "max_length": 33},
        {"quantize": "int8", "device": "cpu", "batch_tokens": 9, "max_batch_rows": 3},
        {"window_rows": 5, "prefetch_windows": 0, "write_behind_windows": 0, "unpadded": True},
        {"allow_pickle": True, "executor": "ray", "ray_actors": 2, "compile": True},
        {"classify_model": "/c", "embed_model": None},
    ]
    return [EngineConfig(**{**base, **variant}) for variant in variants]


def test_the_hash_is_the_one_the_lists_gave(tmp_path: Path) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"a": ["x", "y"], "b": "z"}))
    configs = _configs(labels)
    models = {"embed": "e" * 64, "ner:p": "n" * 64}
    hashes = [config_hash(config, models) for config in configs]
    assert hashes == [hash_as_before(config, models) for config in configs]
    # speed-only options, window options without windows and a model spelt otherwise (the
    # same fingerprints) keep the first config's hash; every other config has its own
    same = [0, 3, 13, 14, 15]
    assert {hashes[i] for i in same} == {hashes[0]}
    assert len({h for i, h in enumerate(hashes) if i not in same}) == len(hashes) - len(same)
