"""CI (.ci/run) runs `make lint` and `make test`, and fails when either fails."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("lint_rc, test_rc, expected", [
    (0, 0, 0), (1, 0, 1), (0, 1, 1), (2, 1, 2), (0, 5, 0), (1, 5, 1),
])
def test_ci_fails_when_lint_or_tests_fail(tmp_path, lint_rc, test_rc, expected):
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy2(ROOT / ".ci" / "run", repo / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `make` records what it was asked to run; chromium is "installed" so nothing is fetched.
    _shim(bin_dir, "make", f'echo "$1" >> {tmp_path}/calls\n'
                           f'case "$1" in lint) exit {lint_rc};; test) exit {test_rc};; esac\nexit 9')
    _shim(bin_dir, "chromium", "exit 0")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(repo / ".ci" / "run")], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert out.returncode == expected, out.stdout + out.stderr
    assert (tmp_path / "calls").read_text().split() == ["lint", "test"]  # both always run
