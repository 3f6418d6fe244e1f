"""A progress line on stderr for work that takes more than about a second.

Shown only when stderr is a terminal, never on stdout, and only once the work has run for
`DELAY` seconds (short runs print nothing extra). It is transient: it disappears when the work
ends, and it is hidden while a result is handed back (the caller may print tables to the same
terminal), then comes back for the next piece of work.

    with Progress("explain", total=len(texts)) as bar:
        for text in texts:
            bar.phase(f"{n:,} tokens: W_raw = X·Xᵀ")
            ...
            with bar.paused():
                yield trace
            bar.advance()
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import IO, Any, TypeVar

DELAY = 1.0  # seconds of work before the bar appears (ATTN_CLI_PROGRESS_DELAY overrides)


def default_delay() -> float:
    try:
        return max(0.0, float(os.environ.get("ATTN_CLI_PROGRESS_DELAY", DELAY)))
    except ValueError:
        return DELAY


def enabled(stream: IO[str] | None = None) -> bool:
    """A bar is drawn only on a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or fake streams
        return False


class Progress:
    """One task: `total` items (None: unknown), a description of the current phase."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        stream: IO[str] | None = None,
        delay: float | None = None,
        unit: str | None = None,
    ) -> None:
        self.what, self.total = what, total
        self.unit = unit  # set: the bar also shows the rate (unit/s) and the time left
        self.delay = default_delay() if delay is None else delay
        self.stream = sys.stderr if stream is None else stream
        self.on = enabled(self.stream)
        self.done = 0
        self.description = what
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._live: Any = None  # rich.progress.Progress while shown
        self._task: Any = None

    # --- what the work reports ----------------------------------------------------------

    def phase(self, description: str) -> None:
        """What is being done now; starts the clock for showing the bar."""
        with self._lock:
            self.description = description
            if self._live is not None:
                self._live.update(self._task, description=self._label(), refresh=True)
        self._arm()

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            if self._live is not None:
                self._live.update(self._task, completed=self.done, description=self._label())

    def skip(self, count: int) -> None:
        """Items that need no work (done by an earlier run): out of the total, not counted as
        done, so the rate and the time left are this run's."""
        with self._lock:
            if self.total is not None:
                self.total = max(0, self.total - count)
                if self._live is not None:
                    self._live.update(self._task, total=self.total)

    @contextmanager
    def counting(self, total: int, unit: str) -> Iterator[None]:
        """Within: `total` units of work (advance counts them), shown with a rate and the time
        left; the count, total and unit before are restored afterwards."""
        saved = self.total, self.unit, self.done
        self._hide()
        self.total, self.unit, self.done = total, unit, 0
        self._arm()
        try:
            yield
        finally:
            self._hide()
            self.total, self.unit, self.done = saved

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hide the bar while the caller prints (or writes) a result."""
        self._hide()
        yield

    # --- showing and hiding -------------------------------------------------------------

    def _label(self) -> str:
        return f"{self.what} · {self.description}"  # the count is its own column

    def _arm(self) -> None:
        if not self.on:
            return
        with self._lock:
            if self._live is not None or self._timer is not None:
                return
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()

    def _show(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        with self._lock:
            if self._timer is None:  # hidden or closed meanwhile
                return
            self._timer = None
            # A terminal, as `enabled` found when the run began: asked again now, the answer
            # could be "no" while a tokenizer call points the descriptor elsewhere.
            console = Console(
                file=self.stream, stderr=True, markup=False, highlight=False, force_terminal=True
            )
            columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
            if self.total is not None and self.total > 1:
                columns += [BarColumn(), MofNCompleteColumn()]
            columns.append(TimeElapsedColumn())
            if self.unit is not None:
                unit = self.unit

                class Rate(ProgressColumn):
                    def render(self, task: Any) -> Any:
                        speed = task.finished_speed or task.speed
                        return f"{speed:,.1f} {unit}/s" if speed else f"– {unit}/s"

                columns.append(Rate())
                if self.total is not None:
                    columns.append(TimeRemainingColumn())
            live = RichProgress(
                *columns,
                console=console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._task = live.add_task(self._label(), total=self.total, completed=self.done)
            live.start()
            self._live = live

    def _hide(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            live, self._live = self._live, None
        if live is not None:
            live.stop()

    def close(self) -> None:
        self._hide()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Result = TypeVar("Result")


def stream(
    label: str, texts: Iterable[str], one: Callable[[str, Progress], Result]
) -> Iterator[Result]:
    """`one(text, bar)` for each text, computed as it is consumed (memory does not grow with
    the number of texts), under one progress line that is hidden while a result is handed
    back. Every pipeline and model streams its traces through this."""
    bar = Progress(label, len(texts) if isinstance(texts, Sized) else None)
    try:
        for text in texts:
            bar.phase("tokenizing")
            result = one(text, bar)
            with bar.paused():
                yield result
            bar.advance()
    finally:
        bar.close()
