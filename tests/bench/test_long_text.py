"""The long-document benchmark's systems agree before their times are compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertetl.bench.long_text import TOKENS_RANGE, long_documents, run_long_text_bench


def test_long_documents_are_long_and_reproducible() -> None:
    documents = long_documents(4, seed=3)
    assert documents == long_documents(4, seed=3)
    assert all(TOKENS_RANGE[0] * 5 < len(d) < TOKENS_RANGE[1] * 7 for d in documents)


def test_window_mode_and_the_hand_written_chunks_compute_the_same(
    tmp_path: Path, tiny_embed_dir: Path
) -> None:
    report = run_long_text_bench(tmp_path, documents=3, model=str(tiny_embed_dir))
    systems = report["systems"]
    window, hand = systems["bertetl window"], systems["hand-written chunks + ST"]
    assert window["windows"] == hand["windows"] > 3 * 10  # the same token windows
    assert window["model_tokens"] == hand["model_tokens"]
    assert window["padding_waste"] < 0.10
    assert systems["bertetl truncate"]["model_tokens"] < window["model_tokens"] / 10
    assert systems["bertetl truncate"]["truncated_rows"] == 3
    assert report["cosine_window_vs_hand_written_min"] > 0.98


def test_bench_long_documents_command(tmp_path: Path, tiny_embed_dir: Path) -> None:
    import json

    from typer.testing import CliRunner

    from bertetl.cli import app

    out = tmp_path / "long.json"
    args = ["bench", "long-text", "--documents", "2", "--models", str(tiny_embed_dir)]
    args += ["--out", str(out)]
    args += ["--repeats", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["documents"] == 2 and set(report["systems"]) == {
        "bertetl truncate",
        "bertetl window",
        "hand-written chunks + ST",
    }
    # alternating rounds: every system ran twice, and its figure is the median of the two
    for system in report["systems"].values():
        rounds = system["seconds_per_round"]
        assert len(rounds) == 2 and system["seconds"] == round(sum(rounds) / 2, 2)
    assert report["repeats"] == 2 and report["device"] == "cpu"


@pytest.mark.parametrize("args", [["--documents", "0"], ["--documents", "2", "--repeats", "0"]])
def test_no_documents_or_no_rounds_is_one_line(args: list[str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bertetl.cli import app

    out = tmp_path / "long.json"
    result = CliRunner().invoke(app, ["bench", "long-text", *args, "--out", str(out)])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "--documents and --repeats are at least 1" in line
    assert not out.exists()
