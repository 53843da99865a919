"""The wheel carries the shipped configs: an installed openaim (no checkout) loads them with
importlib.resources, and `--config configs/<name>.yaml` finds them from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_configs_and_loads_them_without_a_checkout(tmp_path):
    # Built from a copy: setuptools leaves build/ behind, and a stale build/ would leak into later wheels.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "runs"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("openaim-*.whl")
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {f"shared/config/defaults/{name}" for name in shipped} <= names, sorted(names)[:20]
        # the roof package and the console script pointing into it
        assert {"openaim/cli.py", "openaim/__main__.py", "openaim/report/__init__.py"} <= names
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "openaim = openaim.cli:main" in zf.read(entry_points).decode()
        site = tmp_path / "site"
        zf.extractall(site)
    # A fresh process that sees only the unpacked wheel, run from an unrelated folder.
    code = (
        "import json, shared.config.loading as L\n"
        "from importlib import resources\n"
        "names = sorted(p.name for p in (resources.files('shared.config') / 'defaults').iterdir())\n"
        "cfgs = {n: L.load_config(f'configs/{n}').training.model.width for n in names}\n"
        "print(json.dumps({'file': L.__file__, 'names': names, 'default': L.load_config(None).workdir.name,"
        " 'widths': cfgs}))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False, cwd=elsewhere, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(site))
    assert got["names"] == shipped
    assert set(got["widths"]) == set(shipped) and all(w > 0 for w in got["widths"].values())
    # the installed command answers from the unpacked wheel (python -m openaim, as the console script)
    out = subprocess.run([sys.executable, "-m", "openaim", "--help"], capture_output=True, text=True,
                         timeout=120, check=False, cwd=elsewhere, env=env)
    assert out.returncode == 0 and "build-dataset" in out.stdout, out.stderr[-3000:]


def test_a_missing_config_outside_configs_is_still_an_error(tmp_path):
    from shared.config.loading import load_config
    from shared.errors import ConfigError

    try:
        load_config(tmp_path / "demo.yaml")
    except ConfigError as exc:
        assert "config file not found" in str(exc)
    else:
        raise AssertionError("a missing config file loaded")
