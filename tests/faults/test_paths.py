"""Rule 1: a run writes only inside its own output, and never into its input.

Each case points a real `bertetl` command at a layout where DEST is SOURCE, lies inside it,
holds it, or reaches into it through a link. Every command that writes must refuse at once
with one line naming both paths, before it locks DEST, starts a server or loads a model, and
leave every file (hidden ones too) exactly as it was.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertetl.cli import app
from bertetl.errors import InputError, PartitionsFailedError
from tests.outputs import snapshot

COMMANDS = ("backfill", "incremental", "enrich")


def run(command: str, source: Path | str, dest: Path | str, model: Path, *extra: str):
    """`bertetl COMMAND SOURCE DEST` in this process (the CLI as a user calls it)."""
    args = [command, str(source), str(dest), "--text-column", "text", "--embed-model", str(model)]
    if command != "enrich":
        args += ["--partition-column", "date"]
    return CliRunner().invoke(app, [*args, *extra])


def _same(tmp: Path, src: Path) -> tuple[Path, Path]:
    return src, src


def _inside(tmp: Path, src: Path) -> tuple[Path, Path]:
    return src, src / "enriched"


def _around(tmp: Path, src: Path) -> tuple[Path, Path]:
    return src, tmp


def _linked(tmp: Path, src: Path) -> tuple[Path, Path]:
    (tmp / "out").symlink_to(src)
    return src, tmp / "out"


def _linked_inside(tmp: Path, src: Path) -> tuple[Path, Path]:
    (tmp / "data").symlink_to(src)
    return src, tmp / "data" / "out"


def _dotdot(tmp: Path, src: Path) -> tuple[Path, Path]:
    (tmp / "elsewhere").mkdir()
    return src, tmp / "elsewhere" / ".." / "src" / "out"


def _partition_as_source(tmp: Path, src: Path) -> tuple[Path, Path]:
    """SOURCE is one partition; DEST a sibling `date=` folder a later run would read."""
    return src / "date=2026-01-01", src / "date=2026-01-01-enriched"


def _dest_partition_links_into_source(tmp: Path, src: Path) -> tuple[Path, Path]:
    """DEST's partition folder is a link to SOURCE's: writing it would overwrite inputs."""
    (tmp / "dest").mkdir()
    (tmp / "dest" / "date=2026-01-01").symlink_to(src / "date=2026-01-01")
    return src, tmp / "dest"


def _source_partition_links_into_dest(tmp: Path, src: Path) -> tuple[Path, Path]:
    """A partition linked into SOURCE from a folder inside DEST: a run could replace it."""
    (tmp / "dest" / "kept").mkdir(parents=True)
    shutil.move(src / "date=2026-01-02", tmp / "dest" / "kept" / "date=2026-01-02")
    (src / "date=2026-01-02").symlink_to(tmp / "dest" / "kept" / "date=2026-01-02")
    return src, tmp / "dest"


LAYOUTS: dict[str, tuple[Callable[[Path, Path], tuple[Path, Path]], str]] = {
    "dest-is-source": (_same, "is SOURCE"),
    "dest-inside-source": (_inside, "lies inside SOURCE"),
    "source-inside-dest": (_around, "lies inside DEST"),
    "dest-links-to-source": (_linked, "is SOURCE"),
    "dest-inside-a-link-to-source": (_linked_inside, "lies inside SOURCE"),
    "dest-through-dotdot": (_dotdot, "lies inside SOURCE"),
    "partition-source-sibling-dest": (_partition_as_source, "lies inside SOURCE"),
    "dest-partition-links-into-source": (_dest_partition_links_into_source, "would overwrite"),
    "source-partition-links-into-dest": (_source_partition_links_into_dest, "lies inside DEST"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_writing_command_refuses_dest_that_touches_source(
    command: str,
    layout: str,
    tiny_embed_dir: Path,
    partitioned_source,
    tmp_path: Path,
    nothing_heavy: list[str],
) -> None:
    src = partitioned_source(days=2)
    make, expected = LAYOUTS[layout]
    source, dest = make(tmp_path, src)
    before = snapshot(tmp_path)
    result = run(command, source, dest, tiny_embed_dir)
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert expected in line and "pick a DEST" in line
    assert str(dest) in line or str(dest.resolve()) in line
    assert str(source) in line or str(source.resolve()) in line
    assert nothing_heavy == []  # refused before any server or model
    assert snapshot(tmp_path) == before  # not even a lock file or an empty DEST


@pytest.mark.parametrize("command", COMMANDS)
def test_a_dest_beside_source_is_not_refused(
    command: str, tiny_embed_dir: Path, partitioned_source, tmp_path: Path, nothing_heavy
) -> None:
    """The control: `src-enriched` shares a prefix with `src` but is outside it, and a
    partition linked in from elsewhere is fine; the run gets as far as its server or model."""
    src = partitioned_source(days=2)
    (tmp_path / "archive").mkdir()
    shutil.move(src / "date=2026-01-02", tmp_path / "archive" / "date=2026-01-02")
    (src / "date=2026-01-02").symlink_to(tmp_path / "archive" / "date=2026-01-02")
    result = run(command, src, tmp_path / "src-enriched", tiny_embed_dir)
    assert isinstance(result.exception, AssertionError), result.output
    assert nothing_heavy == ["model" if command == "enrich" else "server"]


def test_enrich_refuses_a_dest_file_that_is_its_input(
    tiny_embed_dir: Path, write_table, tmp_path: Path, nothing_heavy
) -> None:
    src = write_table({"text": ["a", "b"]}, "data/table.parquet")
    (tmp_path / "out.parquet").symlink_to(src)
    before = snapshot(tmp_path)
    for dest in (src, tmp_path / "out.parquet", tmp_path / "data"):
        result = run("enrich", src, dest, tiny_embed_dir)
        assert result.exit_code == 1, result.output
        assert "would overwrite input" in result.output and str(src) in result.output
    assert nothing_heavy == []
    assert snapshot(tmp_path) == before


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_run_without_the_cli_never_writes_into_source(
    tiny_embed_dir: Path, partitioned_source, tmp_path: Path
) -> None:
    """A deployment calls the flow directly: the check inside the run still refuses every
    partition, and no source file changes."""
    from bertetl.config import EngineConfig
    from bertetl.flows.params import BackfillParams, RunOptions
    from bertetl.flows.partitioned import backfill_flow

    src = partitioned_source(days=2)
    (src / "_SUCCESS").write_text("")
    before = {k: v for k, v in snapshot(src).items() if k != ".bertetl.lock"}
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    params = BackfillParams(
        source=str(src),
        dest=str(src),
        partition_column="date",
        engine=config,
        run=RunOptions(retries=0),
    )
    state = backfill_flow(params, return_state=True)
    assert state.is_failed()
    with pytest.raises((InputError, PartitionsFailedError), match="is SOURCE"):
        state.result()
    assert {k: v for k, v in snapshot(src).items() if k != ".bertetl.lock"} == before
