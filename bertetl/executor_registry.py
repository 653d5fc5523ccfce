"""Every executor, named once: `EXECUTORS` maps each name to its options model, its class and
the extra it needs. The `--executor` choices, `EngineConfig.executor`'s union of option
models and the flat option names (`--workers`, `--ray-actors`, ...) are derived from it.

It lives in the foundation, beside `bertetl.config`, because the config validates each
executor's options before any executor is imported; the classes are named by
"module:Class" strings that only `bertetl.executors.make_executor` imports, so nothing here
loads an executor (or Ray). Adding an executor: its options model here, one `ExecutorEntry`
in `EXECUTORS`, its module under `bertetl/executors/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class ExecutorOptionsModel(BaseModel):
    """The options of one executor; `kind` (a `Literal` of its name) tells them apart."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    #: Prefix of the flat names of its fields on the CLI (and in older flow parameters):
    #: "" gives `--workers`, "ray_" gives `--ray-actors`.
    flat_prefix: ClassVar[str] = ""
    #: Another executor's flat option -> the field of these options that does its job (the
    #: hint when one is given with this executor); a field of the same name needs no entry.
    counterparts: ClassVar[dict[str, str]] = {}


class LocalOptions(ExecutorOptionsModel):
    """Options of the local executor: this process, or a pool of worker processes."""

    kind: Literal["local"] = "local"
    workers: int | None = Field(
        None,
        gt=0,
        description="Processes, each with its own model copy and a share of the files; "
        "default one per visible GPU on CUDA, else 1.",
    )
    tokenizers: int | None = Field(
        None,
        ge=0,
        description="Processes per model process that validate and tokenize windows ahead of "
        "the models (0: a thread of the model's process, where the tokenizer's own threads "
        "use every core). Default: 0 on the CPU, where the model needs every core; on CUDA the "
        "cores left after each model process's model and writer threads, at most 8.",
    )


class RayOptions(ExecutorOptionsModel):
    """Options of the Ray executor (`--executor ray`, needs the ray extra)."""

    flat_prefix: ClassVar[str] = "ray_"
    counterparts: ClassVar[dict[str, str]] = {"workers": "actors"}

    kind: Literal["ray"] = "ray"
    address: str | None = Field(
        None,
        description="Ray cluster to use with --executor ray; default: RAY_ADDRESS if set, "
        "else a local Ray started for the run and stopped after.",
    )
    actors: int | None = Field(
        None,
        gt=0,
        description="Model actors with --executor ray; default one per cluster GPU, "
        "else one per node.",
    )
    tokenizers: int | None = Field(
        None,
        gt=0,
        description="Tokenizer actors with --executor ray; default as many as model actors.",
    )
    group_rows: int = Field(
        1_000_000,
        gt=0,
        description="With --executor ray, backfill and incremental send partitions to Ray in "
        "groups of about this many rows, so the actor pools start once per group.",
    )


@dataclass(frozen=True)
class ExecutorEntry:
    """One executor: its options model, its class as "module:Class" (imported only when
    chosen), the extra it needs, and what it is (for `--executor`'s help)."""

    options: type[ExecutorOptionsModel]
    target: str
    summary: str
    extra: str | None = None

    @property
    def name(self) -> str:
        """The executor's name: its options' `kind`."""
        return str(self.options.model_fields["kind"].default)


#: Every executor by name, in `--executor`'s order; the first is the default.
EXECUTORS: dict[str, ExecutorEntry] = {
    entry.name: entry
    for entry in (
        ExecutorEntry(
            LocalOptions,
            "bertetl.executors.local:LocalExecutor",
            "this process (and --workers)",
        ),
        ExecutorEntry(
            RayOptions,
            "bertetl.executors.ray.executor:RayExecutor",
            "a Ray Data pipeline on a Ray cluster (needs the ray extra)",
            extra="ray",
        ),
    )
}
DEFAULT_EXECUTOR = next(iter(EXECUTORS))

#: The executors' names, as the type of `--executor` (its choices).
ExecutorName: Any = Literal.__getitem__(tuple(EXECUTORS))

if TYPE_CHECKING:
    ExecutorOptions = ExecutorOptionsModel
else:  # the union of every executor's options, told apart by `kind`
    ExecutorOptions = Annotated[
        Union[tuple(entry.options for entry in EXECUTORS.values())],  # noqa: UP007
        Field(discriminator="kind"),
    ]

#: The flat option names (the CLI's, and older flow parameters') -> the executor and the field
#: of its options, in `--help` order.
FLAT_EXECUTOR_OPTIONS: dict[str, tuple[str, str]] = {
    entry.options.flat_prefix + field: (name, field)
    for name, entry in EXECUTORS.items()
    for field in entry.options.model_fields
    if field != "kind"
}


def executor_help() -> str:
    """`--executor`'s help: each executor's name and what it is."""
    return "; ".join(f"{name}: {entry.summary}" for name, entry in EXECUTORS.items()) + "."


def default_options() -> ExecutorOptionsModel:
    """The default executor's default options."""
    return EXECUTORS[DEFAULT_EXECUTOR].options.model_validate({})


def nest_flat_options(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the flat spelling (`executor="ray"`, `workers`, `ray_actors`, ...) nested
    under `executor` (`{"kind": "ray", "actors": 2}`); the options of an executor other than
    the chosen one are refused, naming what to give instead."""
    flat = {name: data.pop(name) for name in list(data) if name in FLAT_EXECUTOR_OPTIONS}
    executor = data.get("executor")
    if executor is None and not flat:
        return data
    if isinstance(executor, BaseModel):
        executor = executor.model_dump()
    nested = (
        dict(executor) if isinstance(executor, dict) else {"kind": executor or DEFAULT_EXECUTOR}
    )
    kind = nested.get("kind", DEFAULT_EXECUTOR)
    given = {name: value for name, value in flat.items() if value is not None}
    _refuse_other_executors_options(kind, given)
    for name, value in given.items():
        option_kind, field = FLAT_EXECUTOR_OPTIONS[name]
        if option_kind == kind:
            nested[field] = value
    data["executor"] = nested
    return data


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _checked(kind: str) -> list[str]:
    """The flat options of `kind` that tell whether they were given: those without a default
    (one with a default, such as `ray_group_rows`, is always passed by the CLI)."""
    options = EXECUTORS[kind].options
    return [
        flat
        for flat, (owner, field) in FLAT_EXECUTOR_OPTIONS.items()
        if owner == kind and options.model_fields[field].default is None
    ]


def _refuse_other_executors_options(kind: str, given: dict[str, Any]) -> None:
    """Raise `ValueError` for the first given option of an executor other than `kind`: with
    the default executor, the options of the one they need; else what to use instead."""
    if kind not in EXECUTORS:  # the config's own validation names the choices
        return
    for name in [flat for flat in FLAT_EXECUTOR_OPTIONS if flat in given]:
        owner, field = FLAT_EXECUTOR_OPTIONS[name]
        if owner == kind or name not in _checked(owner):
            continue
        if kind == DEFAULT_EXECUTOR:
            flags = [_flag(flat) for flat in _checked(owner)]
            listed = flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} and {flags[-1]}"
            raise ValueError(f"{listed} need --executor {owner}")
        options = EXECUTORS[kind].options
        instead = options.counterparts.get(name, field)
        hint = ""
        if instead in options.model_fields:
            hint = f"; with {kind} use {_flag(options.flat_prefix + instead)}"
        raise ValueError(f"{_flag(name)} is for --executor {owner}{hint}")
