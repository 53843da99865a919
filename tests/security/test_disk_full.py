"""A full disk (a real, small tmpfs) during the download and a training checkpoint write: one DiskFullError
line that says "disk full" and names the path; nothing half-written left looking finished."""

from __future__ import annotations

import io
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curation.download import download_pool
from curation.pool import finished_shards
from shared.config.curation import DownloadConfig
from shared.config.training import ModelConfig
from shared.errors import DiskFullError
from tests.http_server import LoggedServer
from tests.security.conftest import ALLOW
from tests.security.test_download_policy import _write_pairs
from training.checkpoint import complete_checkpoints, write_checkpoint


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (skipped where mounting is not permitted, e.g. without root)."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()[:80]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _noise_jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    pixels = (np.random.default_rng(i).random((256, 256, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_checkpoint_write_on_a_full_disk_is_one_clear_error(small_disk):
    path = small_disk / "training" / "step_0000010"
    state = {"w": torch.zeros(1 << 20)}  # 4 MiB: does not fit
    with pytest.raises(DiskFullError) as info:
        write_checkpoint(path, state, ModelConfig(), {"step": 10})
    assert str(info.value).startswith(f"disk full: cannot write {path}")
    assert "\n" not in str(info.value)
    assert complete_checkpoints(small_disk / "training") == []
    assert not any((small_disk / "training").iterdir())  # the temporary directory was removed


def test_download_on_a_full_disk_is_one_clear_error(tmp_path, small_disk):
    with LoggedServer("127.0.0.1") as srv:
        for i in range(60):
            srv.files[f"{i}.jpg"] = _noise_jpeg(i)
        _write_pairs(tmp_path / "pairs.parquet", [f"{srv.base_url}/file/{i}.jpg" for i in range(60)])
        pool = small_disk / "pool"
        cfg = DownloadConfig(processes=1, threads=4, image_size=256, resize_mode="no", samples_per_shard=20,
                             timeout=5)
        with pytest.raises(DiskFullError) as info:
            download_pool(cfg, tmp_path / "pairs.parquet", pool, ALLOW)
    assert str(info.value).startswith(f"disk full: cannot write {pool}")
    for shard in finished_shards(pool):  # whatever counts as finished is whole
        assert Path(shard + ".tar").stat().st_size > 0
