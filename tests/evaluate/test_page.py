"""report.html: self-contained, and rendered by a real headless Chromium with every image
loaded and the accuracy of metrics.json in its summary table."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bertetl.evaluate.config import EvaluateConfig
from bertetl.evaluate.run import evaluate
from tests.evaluate.tables import multi_label_table, single_label_table

#: Debian's `chromium` package; `make test` (the .dev target) installs it when missing.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Page(HTMLParser):
    """The body's attributes, the images' sources and the text of each element with an id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.images: list[str] = []
        self.by_id: dict[str, str] = {}
        self._open: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        if tag == "img":
            self.images.append(found.get("src") or "")
        if found.get("id"):
            self.by_id[found["id"]] = ""
            self._open.append(found["id"])
        elif tag not in ("img", "meta", "br", "link"):
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in ("img", "meta", "br", "link"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.by_id[ident] += data


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A single-label and a multi-label evaluation (predictions read from a table)."""
    root = tmp_path_factory.mktemp("reports")
    tables = {
        "single": single_label_table(["neg", "pos", "pos"] * 10, ["neg", "pos"], seed=4),
        "multi": multi_label_table([["a"], ["a", "b"], ["c"], []] * 8, ["a", "b", "c"], seed=4),
    }
    outs = []
    for name, table in tables.items():
        (root / name).mkdir()
        pq.write_table(table, root / name / "part-0.parquet")
        config = EvaluateConfig(label_column="y", text_column="text")
        outs.append(evaluate(root / name, root / f"{name}-out", config).out)
    return outs


def test_the_page_is_self_contained(reports: list[Path]) -> None:
    for out in reports:
        html = (out / "report.html").read_text(encoding="utf-8")
        page = Page(html)
        pngs = sorted(p.name for p in out.glob("*.png"))
        assert len(page.images) == len(pngs) >= 4
        assert all(src.startswith("data:image/png;base64,") for src in page.images)
        assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
        accuracy = json.loads((out / "metrics.json").read_text())["accuracy"]
        assert page.by_id["accuracy"] == f"{accuracy:.4f}"


@pytest.mark.slow  # a real browser process
def test_chromium_renders_every_image_and_the_accuracy(reports: list[Path], tmp_path) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (make test installs Debian's `chromium`)")
    for out in reports:
        dom = subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                "--dump-dom", "--virtual-time-budget=5000", (out / "report.html").as_uri(),
            ],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        page = Page(dom)
        widths = [int(w) for w in (page.body.get("data-image-widths") or "").split(",") if w]
        assert len(widths) == len(list(out.glob("*.png"))), dom[:500]
        assert all(width > 0 for width in widths), widths
        assert page.body.get("data-images-loaded") == "true"
        accuracy = json.loads((out / "metrics.json").read_text())["accuracy"]
        assert page.by_id["accuracy"].strip() == f"{accuracy:.4f}"
