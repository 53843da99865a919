"""A failing write (read-only output folder) leaves the previous outputs intact and says so in one line.

Root ignores file permissions, so the failing command runs as the unprivileged `nobody` user (setpriv).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.faults.conftest import ROOT

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _as_nobody_works() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return os.geteuid() != 0  # not root: permissions already apply to us
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import openaim.cli"], cwd=ROOT,
                           capture_output=True, timeout=60, check=False)
    return probe.returncode == 0


def _prefix() -> list[str]:
    return NOBODY if os.geteuid() == 0 else []


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def shared_tmp():
    # pytest's tmp_path is private to root (mode 700); the unprivileged user needs to reach the workdir.
    d = Path(tempfile.mkdtemp(prefix="openaim-ro-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    for p in [d, *d.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(not _as_nobody_works(), reason="cannot run a command as an unprivileged user here")
@pytest.mark.parametrize("command", [
    ["report"],
    ["web", "generate"],
])
def test_read_only_output_keeps_previous_outputs(shared_tmp, command):
    workdir = shared_tmp / "run"
    workdir.mkdir()  # `openaim report` refuses a workdir that does not exist (a typo'd path)
    sets = ["--set", f"workdir={workdir}", "--set", "web.n_images=40", "--set", "web.hq_size=20",
            "--set", "web.bench_train_per_class=2", "--set", "web.bench_test_per_class=2"]
    first = subprocess.run([sys.executable, "-m", "openaim", *command, *sets], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    out_dir = workdir / ("report" if command == ["report"] else "web")
    before = _digest(out_dir)
    assert before
    for p in [workdir, *workdir.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    home = shared_tmp / "home"  # a writable HOME for the unprivileged user (matplotlib's cache)
    home.mkdir()
    home.chmod(0o777)

    second = subprocess.run([*_prefix(), sys.executable, "-m", "openaim", *command, *sets,
                             *(["--set", "web.seed=7"] if command[0] == "web" else [])],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home)})
    assert second.returncode != 0
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, second.stderr
    assert "Traceback" not in second.stderr
    assert "ermission" in lines[0] or "read-only" in lines[0] or "cannot write" in lines[0], lines[0]
    assert _digest(out_dir) == before
