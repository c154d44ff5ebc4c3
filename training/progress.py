"""Progress of a build: a live `rich` display on a terminal, one log line per stage anywhere else."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

logger = logging.getLogger(__name__)

Advance = Callable[[], None]


class BuildProgress:
    """Reports build stages; `stage()` yields a callback that advances the stage by one step.

    The live display is shown only when `enabled` and stdout is a terminal, so logs and CI output stay
    one line per stage. Stage durations are kept in `seconds_by_stage`.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.interactive = enabled and sys.stdout.isatty()
        self.console = Console()
        self.seconds_by_stage: dict[str, float] = {}
        self._log_streams: list[tuple[logging.StreamHandler, object]] = []
        self._progress: Progress | None = None
        if self.interactive:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )

    def __enter__(self) -> BuildProgress:
        if self._progress is not None:
            self._progress.start()
            self._log_above_the_display()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._progress is not None:
            for handler, stream in self._log_streams:
                handler.setStream(stream)
            self._progress.stop()

    def _log_above_the_display(self) -> None:
        """Send log lines through the display's stderr (printed above it), not into the middle of it.

        The live display replaces sys.stderr while it runs, but a logging handler keeps the stream it was
        made with: its lines would land inside the redrawn rows.
        """
        if sys.stderr is sys.__stderr__:
            return  # not redirected (not a terminal after all)
        self._log_streams = [
            (handler, handler.setStream(sys.stderr))
            for handler in logging.getLogger().handlers
            if type(handler) is logging.StreamHandler and handler.stream in (sys.__stderr__, sys.__stdout__)
        ]

    @contextmanager
    def stage(self, description: str, total: int = 1) -> Iterator[Advance]:
        """Time one stage of `total` steps; the stage shows as complete when the block ends."""
        start = time.perf_counter()
        if self._progress is None:
            yield _no_op
        else:
            progress = self._progress
            task = progress.add_task(description, total=total)
            yield lambda: progress.advance(task)
            progress.update(task, completed=total)
        self.seconds_by_stage[description] = time.perf_counter() - start
        if not self.interactive:
            logger.info("%s: done in %.1f s", description, self.seconds_by_stage[description])

    def show_results(self, title: str, rows: dict[str, float | int]) -> None:
        """A two-column table on a terminal; one log line per row otherwise."""
        if not self.interactive:
            for name, value in rows.items():
                logger.info("%s %s: %s", title, name, value)
            return
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in rows.items():
            table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
        self.console.print(table)


def _no_op() -> None:
    """Advance nothing: the live display is off."""
