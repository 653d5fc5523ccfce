"""Zero-shot label sets: a comma list of label names, or a label file (JSON or YAML) mapping
each label to one or more descriptions, read into `ZeroShotLabel`s for the config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from bertetl.errors import ConfigError

#: Label files are read by their extension; any other value is a comma list of labels.
LABEL_FILE_SUFFIXES = (".json", ".yaml", ".yml")


class ZeroShotLabel(BaseModel):
    """One zero-shot label and the descriptions whose mean embedding stands for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    descriptions: tuple[str, ...]


def read_labels(value: str) -> list[ZeroShotLabel]:
    """A label set: a `.json`/`.yaml`/`.yml` file mapping each label to a description or a
    list of them (or listing label names only), else a comma list of label names (each its
    own description). Raises `ConfigError` naming the file for what cannot be used."""
    path = Path(value).expanduser()
    if path.suffix.lower() not in LABEL_FILE_SUFFIXES:
        names = [name.strip() for name in value.split(",")]
        if any(not name for name in names):
            raise ConfigError(f"{value!r} has an empty label (a comma list: a,b,c)")
        return [ZeroShotLabel(name=name, descriptions=(name,)) for name in names]
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the label file {path}: {e.strerror or e}") from e
    try:
        pairs = _yaml_pairs(text) if path.suffix.lower() != ".json" else _json_pairs(text)
    except ValueError as e:
        raise ConfigError(f"label file {path}: {' '.join(str(e).split())}") from e
    names = [name for name, _ in pairs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(
            f"label file {path} lists label(s) {', '.join(map(repr, duplicates))} twice; "
            "give each label once, with a list of descriptions"
        )
    labels = []
    for name, descriptions in pairs:
        if not name.strip():
            raise ConfigError(f"label file {path} has an empty label")
        if not descriptions or any(not d.strip() for d in descriptions):
            raise ConfigError(
                f"label file {path}: label {name!r} has an empty description; give it text "
                "(or list labels without descriptions as a list of names)"
            )
        labels.append(ZeroShotLabel(name=name, descriptions=tuple(descriptions)))
    return labels


LabelPairs = list[tuple[str, list[str]]]


def _descriptions(value: Any, label: str) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"label {label!r}: descriptions must be text or a list of texts")
    return items


def _json_pairs(text: str) -> LabelPairs:
    """(label, descriptions) from a JSON object (duplicate keys kept, to be refused) or a
    list of label names."""
    value = json.loads(text, object_pairs_hook=lambda pairs: ("object", pairs))
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [(item, [item]) for item in value]
    if not (isinstance(value, tuple) and value[0] == "object"):
        raise ValueError("expected an object {label: description(s)} or a list of labels")
    return [(str(key), _descriptions(item, str(key))) for key, item in value[1]]


def _yaml_pairs(text: str) -> LabelPairs:
    """(label, descriptions) from a YAML mapping or list, every scalar read as the text it
    is written as (`no:` is the label "no", not False; duplicate keys kept, to be refused)."""
    import yaml

    def scalar(node: Any, label: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise ValueError(f"label {label!r}: descriptions must be text or a list of texts")
        return str(node.value)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"not valid YAML ({e})") from e
    if isinstance(root, yaml.SequenceNode):
        names = [scalar(node, "?") for node in root.value]
        return [(name, [name]) for name in names]
    if not isinstance(root, yaml.MappingNode):
        raise ValueError("expected a mapping {label: description(s)} or a list of labels")
    pairs = []
    for key_node, value_node in root.value:
        label = scalar(key_node, "?")
        if isinstance(value_node, yaml.SequenceNode):
            descriptions = [scalar(node, label) for node in value_node.value]
        elif isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null"):
            descriptions = []
        else:
            descriptions = [scalar(value_node, label)]
        pairs.append((label, descriptions))
    return pairs
