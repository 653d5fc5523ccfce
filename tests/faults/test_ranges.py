"""Rules 7 and 8: say when nothing will happen, and refuse early.

A backfill whose range is inverted, or holds none of the source's partitions, is an error
naming the range (and the partitions that exist), never "0 partition(s) committed" with exit
code 0. Every cheap check (range, paths, source, partition column, DEST's lock) runs before
the Prefect server starts or a model loads, so a refused run costs a second, not a start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from bertetl.cli import app
from bertetl.config import EngineConfig
from bertetl.errors import InputError
from bertetl.io.commit import DestinationLock


def cli(*args: str) -> tuple[int, list[str]]:
    """Run `bertetl ARGS` in this process; the exit code and the `error:` lines."""
    result = CliRunner().invoke(app, list(args))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, errors


def backfill(src: Path, dest: Path, model: Path, *extra: str) -> tuple[int, list[str]]:
    common = ["--partition-column", "date", "--text-column", "text"]
    return cli("backfill", str(src), str(dest), *common, "--embed-model", str(model), *extra)


def test_an_inverted_range_is_refused_in_one_line(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path, nothing_heavy
) -> None:
    src, dest = partitioned_source(days=3), tmp_path / "dest"
    inverted = ("--start", "2026-12-01", "--end", "2026-11-01")
    code, errors = backfill(src, dest, tiny_embed_dir, *inverted)
    assert code == 2
    (line,) = errors
    assert "'2026-12-01' comes after end '2026-11-01'" in line and "swap --start and --end" in line
    assert nothing_heavy == [] and not dest.exists()


def test_deployment_parameters_refuse_an_inverted_range(tiny_embed_dir: Path) -> None:
    from bertetl.flows.params import BackfillParams

    engine = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    common = {"source": "src", "dest": "dest", "partition_column": "date", "engine": engine}
    with pytest.raises(ValidationError, match="comes after end"):
        BackfillParams(**common, start="2026-01-03", end="2026-01-02")
    for start, end in (("2026-01-02", "2026-01-02"), ("2026-01-02", None), (None, "2026-01-01")):
        assert BackfillParams(**common, start=start, end=end).start == start  # valid ranges


@pytest.mark.parametrize(
    ("bounds", "shown"),
    [
        (("--start", "2026-12-01", "--end", "2026-12-31"), "[2026-12-01, 2026-12-31]"),
        (("--start", "2026-01-04"), "[2026-01-04, (last)]"),
        (("--end", "2025-12-31"), "[(first), 2025-12-31]"),
        (("--start", "2026-01-01T", "--end", "2026-01-01Z"), "[2026-01-01T, 2026-01-01Z]"),
    ],
)
def test_a_range_with_no_partition_names_the_range_and_what_exists(
    bounds: tuple[str, ...],
    shown: str,
    tiny_embed_dir: Path,
    partitioned_source,
    tmp_path: Path,
    nothing_heavy,
) -> None:
    src, dest = partitioned_source(days=3), tmp_path / "dest"
    code, errors = backfill(src, dest, tiny_embed_dir, *bounds)
    assert code == 1
    (line,) = errors
    assert f"no partition of {src} has date in {shown}" in line
    assert "3 partition(s) run from date=2026-01-01 to date=2026-01-03" in line
    assert nothing_heavy == [] and not dest.exists()


@pytest.mark.usefixtures("prefect_harness")
def test_a_deployment_run_over_an_empty_range_fails_naming_it(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    """Without the CLI (a deployment, a schedule), the flow itself fails; nothing is written."""
    from bertetl.flows.params import BackfillParams
    from bertetl.flows.partitioned import backfill_flow

    src, dest = partitioned_source(days=2), tmp_path / "dest"
    engine = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    params = BackfillParams(
        source=str(src), dest=str(dest), partition_column="date", engine=engine, start="2027"
    )
    state = backfill_flow(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match=r"has date in \[2027, \(last\)\]"):
        state.result()
    assert not dest.exists() or not any(p.name.startswith("date=") for p in dest.iterdir())


def test_a_locked_dest_is_refused_before_any_server_or_model(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path, nothing_heavy
) -> None:
    src, dest = partitioned_source(days=2), tmp_path / "dest"
    with DestinationLock(dest):  # another run holds DEST
        for command in ("backfill", "incremental"):
            code, errors = cli(
                command, str(src), str(dest), "--partition-column", "date",
                "--text-column", "text", "--embed-model", str(tiny_embed_dir),
            )  # fmt: skip
            assert code == 1
            (line,) = errors
            assert f"another bertetl run is writing {dest} (pid {os.getpid()}" in line
        code, errors = cli(
            "enrich", str(src), str(dest), "--text-column", "text",
            "--embed-model", str(tiny_embed_dir),
        )  # fmt: skip
        assert code == 1 and "another bertetl run is writing" in errors[0]
    assert nothing_heavy == []
    assert not dest.exists()  # the refused runs wrote nothing: DEST went with the lock that made it


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no source", "source {tmp}/nope does not exist"),
        ("no partition column", "is not inside a region=VALUE folder"),
        ("no data files", "holds no data files"),
        ("no model", "does not exist"),
        ("dest is source", "is SOURCE"),
    ],
)
def test_every_cheap_check_runs_before_any_server_or_model(
    case: str,
    expected: str,
    tiny_embed_dir: Path,
    partitioned_source,
    tmp_path: Path,
    nothing_heavy,
) -> None:
    src, dest = partitioned_source(days=2), tmp_path / "dest"
    column, model = "date", str(tiny_embed_dir)
    if case == "no source":
        src = tmp_path / "nope"
    elif case == "no partition column":
        column = "region"
    elif case == "no data files":
        src = tmp_path / "empty"
        (src / "date=2026-01-01").mkdir(parents=True)
        (src / "date=2026-01-01" / "_SUCCESS").write_text("")
    elif case == "no model":
        model = str(tmp_path / "no-model")
    elif case == "dest is source":
        dest = src
    for command in ("backfill", "incremental"):
        code, errors = cli(
            command, str(src), str(dest), "--partition-column", column,
            "--text-column", "text", "--embed-model", model,
        )  # fmt: skip
        assert code == 1
        (line,) = errors
        assert expected.format(tmp=tmp_path) in line
    assert nothing_heavy == []
    assert not (tmp_path / "dest").exists()
