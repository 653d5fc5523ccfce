"""The executor contract, run through every registered executor (`EXECUTORS`): the same jobs,
the same cases, checked against plain transformers forward passes (`tests/reference.py`).

- outputs equal the reference: embeddings, labels and scores, row for row;
- one `FileResult` per job, in job order, a failed file among them (nothing committed for it);
- the counters and drift sums manifests keep: rows, failed and truncated rows, label counts,
  embedding and score sums;
- `stop_at_error`: the results reach the first failure, and no job after it is committed
  unless it has a result;
- no process of the executor's is left after `teardown()`.

A new executor runs here as soon as it has its registry entry; `HARNESSES` gives it the
marks and session fixtures it needs (Ray: the session's one local Ray) and option variants.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertetl.config import EngineConfig
from bertetl.executors import EXECUTORS, Job, make_executor
from bertetl.io.read import SourceFile
from bertetl.results import EnrichReport, FileResult
from tests.conftest import TEXTS
from tests.reference import cosine, reference_embeddings, reference_probabilities

#: The tiny models' limits (their `max_seq_length` and `max_position_embeddings`).
EMBED_MAX_LENGTH, CLASSIFY_MAX_LENGTH = 48, 128
LABELS = ["negative", "neutral", "positive"]


def _no_resource_tracker(command: str) -> bool:
    """Any new process but multiprocessing's resource tracker (one per interpreter, kept)."""
    return "resource_tracker" not in command


def _ray_worker_of_a_run(command: str) -> bool:
    """A Ray actor a run started: bertetl's actors and Ray Data's map workers (the session's
    idle task workers and Ray Data's one stats actor per driver belong to the cluster)."""
    return bool(
        re.search(r"ray::\S*(MapBatches|MapWorker|TokenizeActor|ModelActor|RunCounters)", command)
    )


@dataclass(frozen=True)
class Harness:
    """What an executor's cases need: `marks`, a session `fixture` it runs on, the option
    `variants` to run (flat names: `{"workers": 2}`), which new processes are its own, and
    whether a variant starts any (then they must be seen during the run, or the check that
    none is left could not fail)."""

    marks: tuple[Any, ...] = ()
    fixture: str | None = None
    variants: tuple[dict[str, Any], ...] = ({},)
    slow_variants: tuple[dict[str, Any], ...] = ()
    own_process: Callable[[str], bool] = _no_resource_tracker
    starts_processes: Callable[[dict[str, Any]], bool] = lambda variant: False


HARNESSES = {
    # in this process, and a pool of two worker processes (each loads the models: slow)
    "local": Harness(
        slow_variants=({"workers": 2},),
        starts_processes=lambda variant: variant.get("workers", 1) > 1,
    ),
    "ray": Harness(
        marks=(pytest.mark.ray, pytest.mark.slow),
        fixture="local_ray",
        variants=({"ray_actors": 1},),
        own_process=_ray_worker_of_a_run,
        starts_processes=lambda variant: True,
    ),
}


def _cases() -> list[Any]:
    cases = []
    for name in EXECUTORS:
        harness = HARNESSES.get(name, Harness())
        for variant in harness.variants + harness.slow_variants:
            slow = (pytest.mark.slow,) if variant in harness.slow_variants else ()
            label = "-".join([name, *(f"{k}={v}" for k, v in variant.items())])
            cases.append(pytest.param((name, variant), marks=(*harness.marks, *slow), id=label))
    return cases


@dataclass
class Run:
    """One executor's run of the contract's jobs, and what the cases compare."""

    jobs: list[Job]
    results: list[FileResult]
    texts: dict[str, list[str | None]]
    embed_dir: Path
    classify_dir: Path
    stopped: list[FileResult] = field(default_factory=list)
    stopped_jobs: list[Job] = field(default_factory=list)
    left: dict[int, str] = field(default_factory=dict)
    #: Its processes seen while it ran (by `on_rows`), and whether there should be some.
    seen: dict[int, str] = field(default_factory=dict)
    starts_processes: bool = False


def _descendants() -> dict[int, str]:
    """The processes below this one, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _descends_from(int(entry.name), os.getpid()):
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            found[int(entry.name)] = command
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def _texts(seed: int) -> list[str | None]:
    """TEXTS (long ones among them, cut at the embedding model's limit), a null, a blank."""
    texts: list[str | None] = [f"{TEXTS[(i + seed) % len(TEXTS)]} {i}" for i in range(23)]
    texts[3], texts[17] = None, "   "
    return texts


def _write(path: Path, texts: list[str | None]) -> Job:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string())})
    pq.write_table(table, path, row_group_size=8)
    return Job(
        SourceFile(str(path), path.name), path.parent.parent / "out" / path.name, table.schema
    )


def _corrupt(job: Job) -> Job:
    """The file with its second row group's data page overwritten: the footer reads, the
    rows of that group do not."""
    column = pq.read_metadata(job.file.path).row_group(1).column(0)
    with open(job.file.path, "r+b") as handle:
        handle.seek(column.data_page_offset)
        handle.write(b"\xff" * 16)
    return job


def _run_jobs(executor: Any, jobs: list[Job], scratch: Path, **kw: Any) -> list[FileResult]:
    scratch.mkdir(parents=True)
    return executor.run_jobs(jobs, scratch=scratch, **kw)


@pytest.fixture(scope="module", params=_cases())
def run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_embed_dir: Path,
    tiny_classifier_dir: Path,
) -> Run:
    """The contract's jobs through one executor: two good files around a corrupt one, run
    whole, then again with `stop_at_error` from the corrupt one; processes before and after."""
    name, variant = request.param
    harness = HARNESSES.get(name, Harness())
    if harness.fixture:
        request.getfixturevalue(harness.fixture)
    root = tmp_path_factory.mktemp(f"contract-{name}")
    texts = {f"{part}.parquet": _texts(seed) for seed, part in enumerate("abc")}
    good_a, bad, good_c = (_write(root / "src" / file, t) for file, t in texts.items())
    jobs = [good_a, _corrupt(bad), good_c]
    config = EngineConfig(
        text_column="text",
        embed_model=str(tiny_embed_dir),
        classify_model=str(tiny_classifier_dir),
        device="cpu",
        window_rows=8,
        executor=name,
        **variant,
    )
    before = _descendants()
    seen: dict[int, str] = {}

    def on_rows(rows: int) -> None:  # progress: the executor's processes are up
        seen.update(_own(before, harness.own_process))

    executor = make_executor(config)
    executor.setup()
    try:
        results = _run_jobs(executor, jobs, root / "scratch", on_rows=on_rows)
        stopped_jobs = [
            job._replace(target=root / "stopped" / Path(job.target).name) for job in jobs[1:]
        ]
        stopped = _run_jobs(executor, stopped_jobs, root / "scratch-2", stop_at_error=True)
        executor.collect(EnrichReport(files=list(results)))  # stage counters, where kept
    finally:
        executor.teardown()
    left = _left_after(before, harness.own_process)
    return Run(
        jobs,
        results,
        texts,
        tiny_embed_dir,
        tiny_classifier_dir,
        stopped,
        stopped_jobs,
        left,
        seen,
        harness.starts_processes(variant),
    )


def _own(before: dict[int, str], own: Callable[[str], bool]) -> dict[int, str]:
    """The processes below this one that were not `before` and are the executor's."""
    return {pid: cmd for pid, cmd in _descendants().items() if pid not in before and own(cmd)}


def _left_after(
    before: dict[int, str], own: Callable[[str], bool], wait_s: float = 60
) -> dict[int, str]:
    """The executor's processes still alive after teardown, with their command lines (Ray
    reaps actors in its own time: waited for up to `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = _own(before, own)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _valid(texts: list[str | None]) -> list[str]:
    return [t for t in texts if t is not None and t.strip()]


def test_outputs_equal_the_reference(run: Run) -> None:
    for job in (run.jobs[0], run.jobs[2]):
        texts = run.texts[Path(job.file.path).name]
        out = pq.read_table(job.target)
        assert out.select(["id", "text"]).equals(pq.read_table(job.file.path))
        errors = out.column("enrich_error").to_pylist()
        valid = [i for i, t in enumerate(texts) if t is not None and t.strip()]
        assert [i for i, e in enumerate(errors) if e is None] == valid
        got = np.array([out.column("embedding")[i].as_py() for i in valid])
        want = reference_embeddings(run.embed_dir, _valid(texts), EMBED_MAX_LENGTH)
        assert cosine(got, want).min() >= 0.9999
        probs = reference_probabilities(run.classify_dir, _valid(texts), CLASSIFY_MAX_LENGTH)
        labels = out.column("label").to_pylist()
        assert [labels[i] for i in valid] == [LABELS[k] for k in probs.argmax(1)]
        scores = out.column("score").to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(scores[valid], probs.max(1), atol=1e-5)


def test_one_result_per_job_and_a_failed_file_commits_nothing(run: Run) -> None:
    assert [r.source for r in run.results] == [job.file.path for job in run.jobs]
    good_a, bad, good_c = run.results
    assert good_a.error is None and good_c.error is None
    assert bad.error and bad.dest is None
    committed = Path(run.jobs[0].target).parent
    assert sorted(p.name for p in committed.iterdir()) == ["a.parquet", "c.parquet"]


def _content_tokens(model_dir: Path, texts: list[str]) -> list[int]:
    """Each text's tokens without the special ones, by the model's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]


def test_counters_and_drift_sums_are_those_of_the_rows(run: Run) -> None:
    """Rows, failed and truncated rows, label counts and the embedding and score sums
    manifests and drift reports read, per file, against the reference."""
    for result, job in zip(run.results, run.jobs, strict=True):
        if result.error is not None:
            continue
        texts = run.texts[Path(job.file.path).name]
        valid = _valid(texts)
        assert (result.rows, result.rows_failed) == (len(texts), len(texts) - len(valid))
        # [CLS] and [SEP] take two of the embedding model's positions
        lengths = _content_tokens(run.embed_dir, valid)
        truncated = sum(n > EMBED_MAX_LENGTH - 2 for n in lengths)
        assert result.rows_truncated == truncated > 0
        probs = reference_probabilities(run.classify_dir, valid, CLASSIFY_MAX_LENGTH)
        assert result.label_counts == {"label": dict(Counter(LABELS[k] for k in probs.argmax(1)))}
        embeddings = reference_embeddings(run.embed_dir, valid, EMBED_MAX_LENGTH)
        embedding_sum, score_sum = result.embedding_sums["embedding"], result.score_sums["score"]
        assert embedding_sum.count == score_sum.count == len(valid)
        np.testing.assert_allclose(embedding_sum.mean(), embeddings.mean(0), atol=1e-4)
        np.testing.assert_allclose(score_sum.mean(), [probs.max(1).mean()], atol=1e-5)


def test_stop_at_error_results_reach_the_failure(run: Run) -> None:
    """From the corrupt file on, with `stop_at_error`: the results are those of the first
    jobs, the failure first; a later job is committed only when it has a result."""
    results, jobs = run.stopped, run.stopped_jobs
    assert 1 <= len(results) <= len(jobs)
    assert [r.source for r in results] == [job.file.path for job in jobs[: len(results)]]
    assert results[0].error and not Path(jobs[0].target).exists()
    for index, job in enumerate(jobs[1:], start=1):
        done = index < len(results) and results[index].error is None
        assert Path(job.target).exists() == done


def test_no_process_is_left_after_teardown(run: Run) -> None:
    assert bool(run.seen) == run.starts_processes, run.seen
    assert not run.left, run.left
    assert not multiprocessing.active_children()
