"""The heap trim policy: after so many rows or bytes of windows, never by elapsed time.

Counted against a fake libc (no real trims, no timing): `malloc_trim` and `mallopt` calls are
recorded, so each test knows exactly when a trim happened.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from bertetl.engine import heap
from bertetl.engine.heap import HeapTrim


class FakeLibc:
    """Records `mallopt` and `malloc_trim` calls; both succeed."""

    def __init__(self) -> None:
        self.trims = 0
        self.mallopts: list[tuple[int, int]] = []

    def malloc_trim(self, pad: int) -> int:
        self.trims += 1
        return 1

    def mallopt(self, param: int, value: int) -> int:
        self.mallopts.append((param, value))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(heap, "_libc", lambda: fake)
    monkeypatch.setattr(heap, "_applied", None)
    monkeypatch.delenv(heap.ENV, raising=False)
    return fake


def test_it_trims_after_every_so_many_rows_however_fast_the_windows_come(libc: FakeLibc) -> None:
    heap.pin_mmap_threshold("cpu")
    trim = HeapTrim(every_rows=4096, every_bytes=1 << 40)
    # 20 windows of 1,000 rows, back to back (microseconds apart): a timer would trim once
    trimmed = [trim.after_window(1000, 1) for _ in range(20)]
    # rows since the last trim reach 4,096 at the 5th window, then again 5 windows later
    assert [i + 1 for i, t in enumerate(trimmed) if t] == [5, 10, 15, 20]
    assert libc.trims == trim.trims == 4


def test_it_trims_after_so_many_bytes_when_windows_are_few_rows_of_long_text(
    libc: FakeLibc,
) -> None:
    heap.pin_mmap_threshold("cpu")
    trim = HeapTrim(every_rows=4096, every_bytes=64 << 20)
    trimmed = [trim.after_window(10, 30 << 20) for _ in range(9)]  # 30 MiB a window
    assert [i + 1 for i, t in enumerate(trimmed) if t] == [3, 6, 9]  # 90 MiB >= 64 MiB
    assert libc.trims == 3


def test_the_default_policy_trims_after_each_default_window(libc: FakeLibc) -> None:
    from bertetl.config import EngineConfig

    heap.pin_mmap_threshold("cpu")
    trim = HeapTrim()
    window = EngineConfig.model_fields["window_rows"].default
    assert all(trim.after_window(window, 1) for _ in range(3)) and libc.trims == 3


def test_the_threshold_is_pinned_on_the_cpu_too_by_default(libc: FakeLibc) -> None:
    assert heap.pin_mmap_threshold("cpu") == heap.DEFAULT_MMAP_THRESHOLD
    assert libc.mallopts == [(heap._M_MMAP_THRESHOLD, heap.DEFAULT_MMAP_THRESHOLD)]
    assert heap.pin_mmap_threshold("cuda") == heap.DEFAULT_MMAP_THRESHOLD  # once a process
    assert len(libc.mallopts) == 1


@pytest.mark.parametrize(("value", "pinned"), [("0", None), ("1048576", 1 << 20), ("x", None)])
def test_the_environment_sets_or_refuses_the_pin(
    libc: FakeLibc, monkeypatch: pytest.MonkeyPatch, value: str, pinned: int | None
) -> None:
    monkeypatch.setenv(heap.ENV, value)
    assert heap.pin_mmap_threshold("cpu") == pinned
    assert libc.mallopts == ([(heap._M_MMAP_THRESHOLD, pinned)] if pinned else [])


def test_nothing_is_trimmed_where_the_threshold_is_not_pinned(
    libc: FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(heap.ENV, "0")
    heap.pin_mmap_threshold("cpu")
    trim = HeapTrim(every_rows=1)
    assert not any(trim.after_window(10, 1) for _ in range(5))
    assert libc.trims == trim.trims == 0 and trim.rows == 0  # counted all the same


def test_the_pipeline_counts_each_window_it_finishes(
    libc: FakeLibc, tiny_embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertetl.config import EngineConfig
    from bertetl.engine.pipeline import Pipeline

    windows: list[int] = []
    after_window = HeapTrim.after_window

    def counted(self: HeapTrim, rows: int, nbytes: int) -> bool:
        windows.append(rows)
        return after_window(self, rows, nbytes)

    monkeypatch.setattr(HeapTrim, "after_window", counted)
    config = EngineConfig(text_column="text", embed_model=str(tiny_embed_dir), device="cpu")
    pipeline = Pipeline(config)
    pipeline.setup()
    try:
        pipeline.heap_trim = HeapTrim(every_rows=16, every_bytes=1 << 40)
        table = pa.table({"text": [f"row {i} of the table" for i in range(40)]})
        out = list(pipeline.transform(table.to_batches(max_chunksize=8)))
    finally:
        pipeline.teardown()
    assert [b.num_rows for b in out] == windows == [8] * 5
    assert libc.trims == 2  # at 16 and 32 rows
