"""The one progress factory: a rich bar on a terminal, plain periodic log lines otherwise.

Long work shows progress both where a person watches (a TTY) and in plain logs (``make demo > log``,
CI, a cluster's job output). Every long loop takes a ``rich.progress.Progress`` (``add_task``,
``advance``, ``update``, ``remove_task``) from ``progress_bar()``; when the output is not a terminal
the same calls become one ``openaim.progress`` log line per task every ``every`` seconds and one when
the task finishes, e.g. ``score: 1200/4000 (30%), 41.2/s, ETA 1m08s``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rich import get_console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("openaim.progress")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LoggedProgress(Progress):
    """A Progress that draws nothing and logs each visible task every ``every`` seconds and when done."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__(disable=True)
        self.every = every
        self._logged_at: dict[TaskID, float] = {}
        self._finished: set[TaskID] = set()

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._logged_at[task_id] = time.monotonic()
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._maybe_log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id)

    def line(self, task_id: TaskID) -> str:
        """``description: completed/total (pct), rate/s, ETA`` of one task."""
        task = self._tasks[task_id]
        text = f"{task.description}: {task.completed:g}"
        if task.total:
            text += f"/{task.total:g} ({task.percentage:.0f}%)"
        if task.speed:
            text += f", {task.speed:.3g}/s"
        if task.finished:
            text += f", done in {_duration(task.finished_time or task.elapsed or 0)}"
        elif task.time_remaining is not None:
            text += f", ETA {_duration(task.time_remaining)}"
        return text

    def _maybe_log(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        if not task.visible or task_id in self._finished:
            return
        now = time.monotonic()
        if task.finished:
            self._finished.add(task_id)
        elif now - self._logged_at.get(task_id, now) < self.every:
            return
        self._logged_at[task_id] = now
        log.info("%s", self.line(task_id))


def progress_bar(*, transient: bool = True, disable: bool = False, every: float = 30.0,
                 plain_log: bool = True) -> Progress:
    """A rich bar (description, bar, n/total, elapsed, remaining) on a terminal; a LoggedProgress
    otherwise, or a silent one with ``plain_log=False`` (a loop that logs its own lines, e.g. training's
    loss/img/s line); a silent one with ``disable`` (e.g. torchrun ranks other than 0)."""
    if disable:
        return Progress(disable=True)
    if get_console().is_terminal:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), transient=transient)
    return LoggedProgress(every) if plain_log else Progress(disable=True)
