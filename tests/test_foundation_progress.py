"""The one progress factory: a rich bar on a terminal, plain log lines (rate, ETA, done) when piped."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress

from shared.progress import LoggedProgress, progress_bar


def test_not_a_terminal_gives_log_lines_with_rate_and_eta(caplog):
    progress = progress_bar(every=0)  # pytest captures the output: not a terminal
    assert isinstance(progress, LoggedProgress)
    with caplog.at_level(logging.INFO, logger="openaim.progress"), progress:
        task = progress.add_task("score", total=4)
        progress.advance(task)
        progress.advance(task)
        progress.update(task, advance=2)
        progress.advance(task)  # past the end: the "done" line is logged once
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("score: 1/4 (25%)")
    assert lines[1].startswith("score: 2/4 (50%)") and "/s, ETA " in lines[1]
    assert lines[2].startswith("score: 4/4 (100%)") and ", done in " in lines[2]
    assert len(lines) == 3


def test_lines_are_spaced_by_every_seconds(caplog):
    progress = progress_bar(every=3600)
    with caplog.at_level(logging.INFO, logger="openaim.progress"), progress:
        task = progress.add_task("extract", total=1000)
        for _ in range(999):
            progress.advance(task)
        assert not caplog.records  # nothing until an hour has passed...
        progress.advance(task)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["extract: 1000/1000 (100%)"]


def test_a_loop_that_logs_its_own_lines_gets_a_bar_on_a_terminal_only(caplog, monkeypatch):
    """Training logs loss/img/s itself: ``plain_log=False`` adds no progress lines when piped, and still
    draws the bar on a terminal."""
    p = progress_bar(every=0, plain_log=False)
    with caplog.at_level(logging.INFO, logger="openaim.progress"), p:
        task = p.add_task("train", total=2)
        p.update(task, completed=2, description="train  loss 1.0")
    assert p.disable and not caplog.records
    terminal = Console(force_terminal=True, file=io.StringIO())
    monkeypatch.setattr("shared.progress.get_console", lambda: terminal)
    bar = progress_bar(plain_log=False)
    assert type(bar) is Progress and not bar.disable and any(isinstance(c, BarColumn) for c in bar.columns)


def test_disabled_and_invisible_tasks_log_nothing(caplog):
    assert type(progress_bar(disable=True)) is Progress
    with caplog.at_level(logging.INFO, logger="openaim.progress"), progress_bar(every=0) as progress:
        task = progress.add_task("hidden", total=2, visible=False)
        progress.advance(task, 2)
    assert not caplog.records


def test_piped_command_shows_progress_in_its_log(tmp_path):
    """`openaim web generate > log`: the log says what ran (the bar alone would show nothing)."""
    out = subprocess.run([sys.executable, "-m", "openaim", "web", "generate", str(tmp_path / "web"),
                          "--n-images", "40", "--set", "web.hq_size=20",
                          "--set", "web.bench_train_per_class=2", "--set", "web.bench_test_per_class=2"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert "mini web: web images: 145/145 (100%)" in log and "done in" in log, log
