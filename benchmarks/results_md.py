"""Rewriting one "## Section" of benchmarks/RESULTS.md, keeping every other section.

Each benchmark script owns one section. Figures measured by hand (a GPU lease, a demo run) sit under a
"### <keep heading>" at the end of that section and survive a rewrite.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from shared.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def run_line(script: str, *details: str) -> str:
    """How a benchmark ran, for its section: its command as run (``script``: the script's ``__file__``, with
    this process's arguments), then in parentheses the date, the machine, its cores, any ``details``, and
    the 1-minute load at the end (the cores are shared with other jobs: the load says how much)."""
    command = " ".join([f"benchmarks/{Path(script).name}", *sys.argv[1:]])
    context = ", ".join([time.strftime("%Y-%m-%d"), platform.processor() or platform.machine(),
                         f"{os.cpu_count()} cores shared with other jobs", *details,
                         f"1-minute load {os.getloadavg()[0]:.1f} at the end"])
    return f"`{command}` ({context})"


def write_section(section: str, text: str, keep: str | None = None, path: Path = RESULTS) -> None:
    """Replace (or append) `section` ("## Name") with `text`; with `keep`, the part of the old section from
    the first line starting with `keep` onwards is carried over below the new text."""
    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == section), None)
    if start is None:
        atomic_write_text(path, old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    kept = next(([""] + lines[i:end] for i in range(start, end) if keep and lines[i].startswith(keep)), [])
    while kept and not kept[-1].strip():
        kept.pop()
    tail = ([""] + lines[end:]) if end < len(lines) else []
    atomic_write_text(path, "\n".join(lines[:start] + text.rstrip("\n").splitlines() + kept + tail) + "\n")
