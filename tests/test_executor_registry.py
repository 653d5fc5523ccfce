"""The executor registry is the one place that names executors: `--executor`'s choices, the
options union and the flat CLI names all come from it, spelt as they were before it."""

from __future__ import annotations

import importlib
import typing

import pytest
from typer.testing import CliRunner

from bertetl.cli import app
from bertetl.cli.options import ENGINE_OPTIONS
from bertetl.config import EngineConfig
from bertetl.executor_registry import (
    EXECUTORS,
    FLAT_EXECUTOR_OPTIONS,
    LocalOptions,
    RayOptions,
    nest_flat_options,
)

#: The flat names as they were written out by hand before the registry (CLI and flows).
FLAT_NAMES_BEFORE = {
    "workers": ("local", "workers"),
    "tokenizers": ("local", "tokenizers"),
    "ray_address": ("ray", "address"),
    "ray_actors": ("ray", "actors"),
    "ray_tokenizers": ("ray", "tokenizers"),
    "ray_group_rows": ("ray", "group_rows"),
}


def test_flat_names_are_derived_as_they_were_spelt() -> None:
    assert list(FLAT_EXECUTOR_OPTIONS.items()) == list(FLAT_NAMES_BEFORE.items())


def test_every_entry_names_its_options_and_an_executor_class() -> None:
    assert list(EXECUTORS) == ["local", "ray"]
    for name, entry in EXECUTORS.items():
        assert entry.options.model_fields["kind"].default == name
        module, cls = entry.target.split(":")
        assert module.startswith("bertetl.executors.")
        if entry.extra:
            pytest.importorskip(entry.extra)
        executor = getattr(importlib.import_module(module), cls)
        assert all(callable(getattr(executor, m)) for m in ("setup", "run_jobs", "teardown"))


def test_the_config_union_and_the_cli_choices_are_the_registry() -> None:
    union = typing.get_args(EngineConfig.model_fields["executor"].annotation)
    assert union == tuple(entry.options for entry in EXECUTORS.values())
    (option,) = [o for o in ENGINE_OPTIONS if o.name == "executor"]
    assert typing.get_args(option.annotation) == tuple(EXECUTORS)
    assert option.default == "local"
    assert {o.name for o in ENGINE_OPTIONS} >= set(FLAT_EXECUTOR_OPTIONS)
    done = CliRunner().invoke(app, ["enrich", "--help"], terminal_width=200)
    assert "local|ray" in done.output  # Typer lists the choices


@pytest.mark.parametrize(
    ("flat", "nested"),
    [
        ({"workers": 2}, LocalOptions(workers=2)),
        (
            {"executor": "ray", "ray_actors": 3, "ray_group_rows": 7},
            RayOptions(actors=3, group_rows=7),
        ),
        # an option with a default is always passed by the CLI: ignored for another executor
        ({"executor": "local", "ray_group_rows": 5, "tokenizers": 0}, LocalOptions(tokenizers=0)),
        (
            {"executor": RayOptions(actors=2), "ray_tokenizers": 1},
            RayOptions(actors=2, tokenizers=1),
        ),
    ],
)
def test_flat_options_nest_under_their_executor(flat: dict, nested: object) -> None:
    config = EngineConfig(text_column="text", embed_model="m", **flat)
    assert config.executor == nested


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        (
            {"executor": "ray", "workers": 2},
            "--workers is for --executor local; with ray use --ray-actors",
        ),
        (
            {"executor": "ray", "tokenizers": 0, "workers": 2},  # the first, in --help order
            "--workers is for --executor local; with ray use --ray-actors",
        ),
        (
            {"executor": "ray", "tokenizers": 0},
            "--tokenizers is for --executor local; with ray use --ray-tokenizers",
        ),
        (
            {"ray_address": "x"},
            "--ray-address, --ray-actors and --ray-tokenizers need --executor ray",
        ),
    ],
)
def test_another_executors_options_are_refused_naming_what_to_use(flat: dict, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        nest_flat_options({"text_column": "text", **flat})
    assert str(refused.value) == message
