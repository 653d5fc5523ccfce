"""Which engine options change what a run writes, declared on each `EngineConfig` field.

A field carries one `OutputEffect` in its annotation (`dtype: Annotated[DType, OUTPUT]`):

- `OUTPUT`: changes the outputs; always in the config hash.
- `added_later(earlier)`: changes the outputs, but was added after outputs were first written,
  by code that behaved as `earlier` does: in the hash only while set otherwise, so a config
  that leaves it alone keeps its old hash (a nightly run does not re-enrich every partition
  after an upgrade).
- `only_with(field)`: shapes the outputs only while another (added-later) option is set, as
  the window options with `long_text = "window"` or the NER options with an NER head.
- `MODEL`: a model; it changes the outputs through the model's fingerprint (`config_hash`'s
  `models`), not through how it is spelt.
- `SPEED`: speed, memory or where it runs only (outputs agree to float rounding): changing it
  does not re-enrich.

`bertetl.io.manifest.config_hash` hashes `output_payload(config)`; a field without an effect
is an error there (and in tests/test_output_options.py), so a new option cannot be left out of
the hash by accident.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

Kind = Literal["output", "later", "group", "model", "speed"]


@dataclass(frozen=True)
class OutputEffect:
    """How one config field bears on the outputs (see the module's docstring)."""

    kind: Kind
    #: `later`: the value the outputs written before the option existed correspond to.
    earlier: Any = None
    #: `group`: the added-later field whose being set brings this one into the hash.
    group: str | None = None
    #: `later`: what of the value is hashed (default: the value itself).
    hashed: Callable[[Any], Any] | None = None


OUTPUT = OutputEffect("output")
MODEL = OutputEffect("model")
SPEED = OutputEffect("speed")


def added_later(earlier: Any, hashed: Callable[[Any], Any] | None = None) -> OutputEffect:
    """An output option added later: hashed (as `hashed(value)`) only when not `earlier`."""
    return OutputEffect("later", earlier=earlier, hashed=hashed)


def only_with(field: str) -> OutputEffect:
    """An output option that counts only while the added-later option `field` is set."""
    return OutputEffect("group", group=field)


@functools.cache
def output_effects(model: type[BaseModel]) -> dict[str, OutputEffect]:
    """Each field's `OutputEffect`; a field with none, or with several, or grouped under a
    field that is not added later, is a `TypeError` naming it."""
    effects: dict[str, OutputEffect] = {}
    for name, info in model.model_fields.items():
        found = [item for item in info.metadata if isinstance(item, OutputEffect)]
        if len(found) != 1:
            raise TypeError(
                f"{model.__name__}.{name} declares {len(found)} output effects: annotate it "
                "with exactly one of OUTPUT, added_later(...), only_with(...), MODEL, SPEED "
                "(bertetl.output_options)"
            )
        effects[name] = found[0]
    for name, effect in effects.items():
        if (
            effect.kind == "group"
            and getattr(effects.get(effect.group or ""), "kind", "") != "later"
        ):
            raise TypeError(
                f"{model.__name__}.{name} is only_with({effect.group!r}), which is not an "
                "added_later field"
            )
    return effects


def output_payload(config: BaseModel) -> dict[str, Any]:
    """The options of `config` that shape its outputs, as its fields declare them: what
    `config_hash` hashes (with the models' fingerprints)."""
    effects = output_effects(type(config))

    def is_set(name: str) -> bool:
        return bool(getattr(config, name) != effects[name].earlier)

    payload: dict[str, Any] = {}
    for name, effect in effects.items():
        value = getattr(config, name)
        if effect.kind == "output" or (effect.kind == "group" and is_set(effect.group or "")):
            payload[name] = value
        elif effect.kind == "later" and is_set(name):
            payload[name] = effect.hashed(value) if effect.hashed else value
    return payload
