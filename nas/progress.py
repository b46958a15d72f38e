"""Progress bars (rich) that stay silent with ``quiet``."""
from __future__ import annotations

import contextlib
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Silent:
    def add_task(self, *a, **k) -> int:
        return 0

    def update(self, *a, **k) -> None:
        pass

    def advance(self, *a, **k) -> None:
        pass


@contextlib.contextmanager
def progress_bar(quiet: bool = False) -> Iterator[Progress | _Silent]:
    """A rich progress display with ETA; refreshed by hand so that it does not disturb timings."""
    if quiet:
        yield _Silent()
        return
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), auto_refresh=False,
                   transient=False)
    with bar:
        yield _RefreshingProgress(bar)


class _RefreshingProgress:
    def __init__(self, bar: Progress):
        self._bar = bar

    def add_task(self, *a, **k) -> int:
        t = self._bar.add_task(*a, **k)
        self._bar.refresh()
        return t

    def update(self, *a, **k) -> None:
        self._bar.update(*a, **k)
        self._bar.refresh()

    def advance(self, task: int, n: float = 1) -> None:
        self._bar.advance(task, n)
        self._bar.refresh()
