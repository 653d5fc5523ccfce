"""Destination lock, staged folders and the atomic partition swap."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import bertetl.io.commit as commit
from bertetl.errors import CommitError
from bertetl.io.commit import DestinationLock, clean_staging, staged_folder, swap_in
from tests.outputs import staging_is_empty


def test_second_lock_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    with DestinationLock(tmp_path / "dest"):
        with pytest.raises(CommitError, match=r"another bertetl run is writing .*pid \d+"):
            DestinationLock(tmp_path / "dest").acquire()
    with DestinationLock(tmp_path / "dest"):  # released: free again
        pass


def test_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys; from bertetl.io.commit import DestinationLock; "
        f"DestinationLock({str(tmp_path / 'dest')!r}).acquire(); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    result = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert result.returncode == -9
    with DestinationLock(tmp_path / "dest"):
        pass


def test_a_dest_the_lock_made_and_left_empty_is_removed(tmp_path: Path) -> None:
    made = tmp_path / "new" / "dest"
    with DestinationLock(made):
        assert (made / commit.LOCK_NAME).exists()
    assert not made.exists()  # nothing was written: no empty DEST left behind
    assert (tmp_path / "new").exists()  # only the folder the lock stands in
    given = tmp_path / "given"
    given.mkdir()
    with DestinationLock(given):
        pass
    assert given.exists()  # the user's own folder stays
    with DestinationLock(made):
        (made / "part-0.parquet").write_text("output")
    assert sorted(p.name for p in made.iterdir()) == [commit.LOCK_NAME, "part-0.parquet"]


def test_a_dest_that_is_a_file_is_named_as_one(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(CommitError, match=r"DEST .*notes\.txt is a file, not a folder"):
        DestinationLock(tmp_path / "notes.txt").acquire()
    assert (tmp_path / "notes.txt").read_text() == "a file"


def test_a_waiter_retakes_the_lock_when_the_holder_removed_dest(tmp_path: Path) -> None:
    """A run waiting on DEST's lock file, which its holder unlinks with the empty DEST it
    made, locks the new file at the path, so a third run is refused, not let in beside it."""
    dest = tmp_path / "dest"
    first = DestinationLock(dest)
    first.acquire()
    waiter = DestinationLock(dest)
    waiting = threading.Thread(target=waiter.acquire, kwargs={"wait": True})
    waiting.start()
    deadline = time.monotonic() + 30
    while not _someone_waits_on(first.path):  # the waiter is blocked in flock
        assert time.monotonic() < deadline, "the waiter never queued on the lock"
        time.sleep(0.01)
    first.release()  # removes the lock file and DEST, which it made
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    assert (dest / commit.LOCK_NAME).exists()  # the waiter's lock is on the file at the path
    with pytest.raises(CommitError, match="another bertetl run is writing"):
        DestinationLock(dest).acquire()
    waiter.release()


def _someone_waits_on(path: Path) -> bool:
    """Whether a `flock` on `path` is queued behind its holder (/proc/locks marks it `->`)."""
    inode = str(path.stat().st_ino)
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and line.split()[-3].endswith(f":{inode}") for line in lines)


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_in_replaces_a_partition_whole(tmp_path: Path, monkeypatch, exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(commit, "_exchange", lambda a, b: False)
    target = tmp_path / "dest" / "date=2026-01-01"
    target.mkdir(parents=True)
    (target / "old.parquet").write_text("old")
    with staged_folder(tmp_path / "dest") as staged:
        (staged / "new.parquet").write_text("new")
        swap_in(staged, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.parquet"]
    assert staging_is_empty(tmp_path / "dest")


def test_swap_in_creates_a_new_partition(tmp_path: Path) -> None:
    target = tmp_path / "dest" / "date=2026-01-01"
    with staged_folder(tmp_path / "dest") as staged:
        (staged / "a.parquet").write_text("a")
        swap_in(staged, target)
    assert (target / "a.parquet").read_text() == "a"


def test_clean_staging_removes_leftovers(tmp_path: Path) -> None:
    leftover = commit.staging_root(tmp_path / "dest") / "abc"
    leftover.mkdir(parents=True)
    (leftover / "x.parquet").write_text("partial")
    assert clean_staging(tmp_path / "dest") == 1
    assert not leftover.exists()


def test_enrich_takes_the_lock_and_cleans_temp_files(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    from bertetl.config import EngineConfig
    from bertetl.runs.enrich import enrich

    src = write_table({"text": ["one", "two"]})
    dest = tmp_path / "dest"
    dest.mkdir()
    leftover = dest / f".part-0.parquet.abc{commit.TEMP_SUFFIX}"
    leftover.write_text("a killed run's partial file")
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir))
    with DestinationLock(dest):
        with pytest.raises(CommitError, match="another bertetl run is writing"):
            enrich(src.parent, dest, config)
    enrich(src.parent, dest, config)
    assert not leftover.exists()
    assert (dest / "part-0.parquet").exists()


def test_a_model_that_fails_to_load_leaves_no_empty_dest(
    tiny_embed_dir: Path, write_table, tmp_path: Path
) -> None:
    """The weights load after DEST is locked (and so made): a model whose weights do not fit
    its config passes the checks before the lock, fails to load, and the run removes DEST."""
    from bertetl.config import EngineConfig
    from bertetl.errors import ModelError
    from bertetl.runs.enrich import enrich

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_embed_dir, broken)
    config_file = broken / "config.json"  # weights of the wrong shape for this config
    model_config = json.loads(config_file.read_text())
    model_config["intermediate_size"] += 8
    config_file.write_text(json.dumps(model_config))
    src = write_table({"text": ["one", "two"]})
    config = EngineConfig(text_column="text", embed_model=str(broken))
    with pytest.raises(ModelError, match=r"other shapes than its config\.json"):
        enrich(src.parent, tmp_path / "out" / "dest", config)
    assert not (tmp_path / "out" / "dest").exists()
    assert list((tmp_path / "out").iterdir()) == []  # no staging folder beside it either


def test_one_table_name_in_two_iceberg_warehouses_stages_apart(
    iceberg_catalog: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local staging of a table DEST is keyed by its lock place: two catalogs (here one name
    pointed at two warehouses) giving one table URI never clean each other's staging."""
    pytest.importorskip("pyiceberg")
    import pyiceberg.catalog
    from pyiceberg.utils.config import Config

    from bertetl.io.stores.locations import resolve

    uri = f"iceberg://{iceberg_catalog}/db.t"
    with commit.staging_for(resolve(uri)) as first:
        (tmp_path / "other").mkdir()
        monkeypatch.setenv("PYICEBERG_CATALOG__LOCAL__WAREHOUSE", f"file://{tmp_path / 'other'}")
        monkeypatch.setattr(pyiceberg.catalog, "_ENV_CONFIG", Config())
        assert commit.clean_leftovers(resolve(uri)) == 0  # the other warehouse's run
        assert first.is_dir()
        with commit.staging_for(resolve(uri)) as second:
            assert first.parent != second.parent  # one staging root per warehouse
