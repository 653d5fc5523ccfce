"""Progress for flow runs: a Prefect progress artifact, log lines with rows/s and ETA, and an
optional rich bar on the terminal."""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact

ARTIFACT_EVERY_S = 1.0
LOG_EVERY_S = 10.0


class RunProgress:
    """Rows done out of `total_rows`; call `advance()` as batches are written."""

    def __init__(self, total_rows: int, title: str, logger: Any, bar: bool = False) -> None:
        self.total = max(total_rows, 0)
        self.title = title
        self.logger = logger
        self.done = 0
        self.started = time.perf_counter()
        self._last_artifact = self._last_log = 0.0
        self.artifact_id = create_progress_artifact(
            0.0, key="bertetl-progress", description=f"{title}: 0 of {self.total:,} rows"
        )
        self._bar: Any = None
        if bar:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(title, total=self.total)

    @property
    def percent(self) -> float:
        return 100.0 if not self.total else min(100.0, 100.0 * self.done / self.total)

    def rate_and_eta(self) -> tuple[float, float | None]:
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        return rate, eta

    def advance(self, rows: int) -> None:
        """Count `rows` more (negative to take back a failed attempt's rows)."""
        self.done += rows
        if self._bar is not None:
            self._bar.update(self._task, completed=max(self.done, 0))
        now = time.perf_counter()
        if now - self._last_artifact >= ARTIFACT_EVERY_S:
            self._publish()
            self._last_artifact = now
        if now - self._last_log >= LOG_EVERY_S:
            self._log()
            self._last_log = now

    def _publish(self) -> None:
        rate, _ = self.rate_and_eta()
        update_progress_artifact(
            self.artifact_id,
            self.percent,
            description=f"{self.title}: {self.done:,} of {self.total:,} rows, {rate:,.0f} rows/s",
        )

    def _log(self) -> None:
        if not self.total:
            self.logger.log(logging.INFO, "%s: nothing to enrich", self.title)
            return
        rate, eta = self.rate_and_eta()
        eta_text = f"ETA {eta:,.0f}s" if eta is not None else "ETA unknown"
        self.logger.log(
            logging.INFO,
            "%s: %s/%s rows (%.1f%%), %.1f rows/s, %s",
            self.title,
            f"{self.done:,}",
            f"{self.total:,}",
            self.percent,
            rate,
            eta_text,
        )

    def finish(self) -> None:
        """Publish the final figures (100% when every row was done) and stop the bar."""
        self._publish()
        self._log()
        if self._bar is not None:
            self._bar.stop()
