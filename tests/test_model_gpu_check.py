"""benchmarks/gpu_check.sh runs end to end on CPU in its --cpu-smoke mode (aim-tiny, 2 steps)."""

import re
import subprocess
import sys


def test_gpu_check_cpu_smoke(repo_root):
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke"], cwd=repo_root, env=env,
                          capture_output=True, check=False, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    # xformers has no CPU kernels: reported unavailable, not crashed
    assert re.search(r"^\| xformers \| \(2, 3, 64, 64\) \| unavailable", out, re.MULTILINE)
    agreement = re.search(r"^\| sdpa \| \(2, 3, 64, 64\) \| ([0-9.e+-]+) \| ([0-9.e+-]+) \| yes \|", out,
                          re.MULTILINE)
    assert agreement and float(agreement.group(1)) < 3e-2
    row = re.search(r"^\| sdpa \| ([0-9.]+) \| ([0-9.]+) \|.*\| ([0-9.]+) \|$", out, re.MULTILINE)
    assert row and float(row.group(1)) > 0 and float(row.group(3)) > 0  # images/s and a finite loss
    # section 3: the shipped training path (loop, FSDP2 on a 1-process group, real loader) ran 3 steps
    shipped = re.search(r"^\| shipped aim-600m \(steps [0-9]+-3\) \| ([0-9.]+) \|", out, re.MULTILINE)
    assert shipped and float(shipped.group(1)) > 0, out[-1500:]
    assert "shipped path MFU (trunk+head)" in out
    # each logged window of section 3 with its data-wait share (steps 1, 2, 3: log_every 1)
    windows = re.findall(r"^\| ([0-9]+)-([0-9]+) \| ([0-9.]+) \| [0-9.]+% \| ([0-9.]+)% \|$", out,
                         re.MULTILINE)
    assert [(int(a), int(b)) for a, b, _, _ in windows] == [(1, 1), (2, 2), (3, 3)], out[-1500:]
    assert all(0 <= float(wait) <= 100 for *_, wait in windows)
    # section 2's whole-model-compiled row, run last (dynamo's eager backend on CPU): same steps, so the
    # same loss as the eager sdpa row up to rounding
    whole = re.search(r"^\| sdpa, whole model compiled \(dynamo eager backend\) \| ([0-9.]+) \|"
                      r".*\| ([0-9.]+) \|$", out, re.MULTILINE)
    assert whole and float(whole.group(1)) > 0, out[-1500:]
    assert abs(float(whole.group(2)) - float(row.group(3))) < 1e-3
    assert "whole-model compile MFU (trunk+head)" in out
