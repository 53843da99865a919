"""Scoring a pool in img2dataset's webdataset layout with a tiny trained own filter network."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from curation.filter_network import load_filter_network
from curation.parts import read_part
from curation.score import score_pool
from curation.train_filter import train_filter_network
from shared.config.curation import FilterNetworkConfig, TrainFilterConfig
from shared.errors import OpenAIMError
from shared.miniweb.datasets import write_hq

ROOT = Path(__file__).resolve().parents[1]
TINY = TrainFilterConfig(embed_dim=16, image_size=32, vision_width=32, vision_layers=1, patch_size=8,
                         text_width=32, text_layers=1, text_heads=2, context_length=16, epochs=1,
                         batch_size=16)


def _make_pool(pool: Path, hq_tar: Path, shards: int, per_shard: int) -> None:
    """Write img2dataset-style shards (NNNNN.tar + NNNNN_stats.json, jpg/txt/json per sample)."""
    with tarfile.open(hq_tar) as tar:
        items: dict[str, dict[str, bytes]] = {}
        for m in tar:
            key, _, ext = m.name.rpartition(".")
            items.setdefault(key, {})[ext] = tar.extractfile(m).read()
    pairs = [items[k] for k in sorted(items)]
    pool.mkdir(parents=True)
    for s in range(shards):
        with wds.TarWriter(str(pool / f"{s:05d}.tar")) as sink:
            for i in range(per_shard):
                p = pairs[(s * per_shard + i) % len(pairs)]
                key = f"{s:05d}{i:04d}"
                caption = p["txt"].decode()
                meta = {"uid": f"uid{s}-{i}", "url": f"http://127.0.0.1/img/{s}/{i}.jpg", "caption": caption,
                        "key": key, "status": "success"}
                sink.write({"__key__": key, "jpg": p["jpg"], "txt": caption,
                            "json": json.dumps(meta).encode()})
        (pool / f"{s:05d}_stats.json").write_text(json.dumps({"successes": per_shard}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    write_hq(root, seed=5, side=48, size=48, shard_size=48)
    net_dir = train_filter_network(TINY, root / "hq", root / "net", seed=0)
    _make_pool(root / "pool", root / "hq" / "hq-00000.tar", shards=4, per_shard=24)
    return root, net_dir


def _net(net_dir):
    return load_filter_network(FilterNetworkConfig(model="own"), net_dir)


def test_scores_equal_direct_cosine_in_shard_key_order(setup):
    root, net_dir = setup
    net = _net(net_dir)
    out = root / "out_direct"
    score_pool(root / "pool", net, out, batch_size=7)
    parts = [read_part(p) for p in sorted((out / "parts").glob("*.parquet"))]
    assert [p.name for p in sorted((out / "parts").glob("*"))] == [f"{s:05d}.parquet" for s in range(4)]
    table = {k: [v for p in parts for v in p[k]] for k in ("uid", "key", "sha256")}
    table["score"] = np.concatenate([p["score"] for p in parts])
    emb = np.concatenate([p["embedding"] for p in parts])
    assert len(table["uid"]) == 96 and emb.shape == (96, net.embed_dim)
    assert table["key"] == sorted(table["key"])
    # direct computation from the tars
    jpgs, caps = [], []
    for shard in sorted((root / "pool").glob("*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False):
            jpgs.append(sample["jpg"])
            caps.append(sample["txt"].decode())
    img = net.encode_images([Image.open(io.BytesIO(j)) for j in jpgs])
    txt = net.encode_texts(caps)
    np.testing.assert_allclose(table["score"], (img * txt).sum(1), atol=1e-4)
    # the stored embedding is int8 with its own scale: its direction is the image embedding's
    cos = (emb * img).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(img, axis=1)
    assert cos.min() > 0.999
    assert table["sha256"] == [hashlib.sha256(j).hexdigest() for j in jpgs]
    assert table["uid"][25] == "uid1-1"


SCRIPT = """
import sys
from pathlib import Path
from curation.filter_network import load_filter_network
from curation.parts import read_part
from curation.score import score_pool
from shared.config.curation import FilterNetworkConfig
net = load_filter_network(FilterNetworkConfig(model="own"), Path(sys.argv[1]))
score_pool(Path(sys.argv[2]), net, Path(sys.argv[3]), batch_size=2, lease_s=3.0)
"""


def test_kill_mid_scoring_then_rerun_is_byte_identical(setup):
    root, net_dir = setup
    ref, out = root / "out_ref", root / "out_killed"
    score_pool(root / "pool", _net(net_dir), ref, batch_size=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(net_dir), str(root / "pool"), str(out)],
                            cwd=ROOT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list((out / "parts").glob("*.parquet")):
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if killed:
        assert len(list((out / "parts").glob("*.parquet"))) < 4
    # the killed process held a claim on the shard it was scoring: this rerun, on the same host, sees its
    # owner gone and takes it at once (elsewhere it would wait for the 3 s lease)
    score_pool(root / "pool", _net(net_dir), out, batch_size=2, lease_s=3.0)
    names = sorted(p.name for p in (out / "parts").iterdir())
    assert names == sorted(p.name for p in (ref / "parts").iterdir())
    for part in (ref / "parts").iterdir():
        assert (out / "parts" / part.name).read_bytes() == part.read_bytes(), part.name


def test_rerun_skips_finished_shards(setup):
    root, net_dir = setup
    out = root / "out_direct2"
    score_pool(root / "pool", _net(net_dir), out)
    part = out / "parts" / "00000.parquet"
    stamp = part.stat().st_mtime_ns
    (out / "parts" / "00001.parquet").unlink()
    score_pool(root / "pool", _net(net_dir), out)
    assert part.stat().st_mtime_ns == stamp and (out / "parts" / "00001.parquet").is_file()


def test_empty_pool_is_one_line_error(tmp_path):
    (tmp_path / "pool").mkdir()
    with pytest.raises(OpenAIMError) as err:
        score_pool(tmp_path / "pool", None, tmp_path / "out")
    assert "empty" in str(err.value) and "\n" not in str(err.value)


def test_pool_of_empty_shards_is_one_line_error(setup, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    with wds.TarWriter(str(pool / "00000.tar")):
        pass
    (pool / "00000_stats.json").write_text("{}")
    with pytest.raises(OpenAIMError) as err:
        score_pool(pool, _net(setup[1]), tmp_path / "out")
    assert "empty" in str(err.value) and "\n" not in str(err.value)


def test_rerun_removes_a_killed_writers_half_written_part(setup):
    # What kill -9 during pq.write_table leaves: the part's temporary sibling, no part.
    root, net_dir = setup
    ref, out = root / "out_ref_tmp", root / "out_half"
    score_pool(root / "pool", _net(net_dir), ref)
    score_pool(root / "pool", _net(net_dir), out)
    (out / "parts" / "00001.parquet").unlink()
    half = out / "parts" / ".00001.parquet.k1ll3d.tmp.parquet"
    half.write_bytes((ref / "parts" / "00001.parquet").read_bytes()[:100])
    score_pool(root / "pool", _net(net_dir), out)
    assert not half.exists()
    names = sorted(p.name for p in (out / "parts").iterdir())
    assert names == sorted(p.name for p in (ref / "parts").iterdir())


READS_SCRIPT = """
import sys
from pathlib import Path
tar, log = sys.argv[3], sys.argv[4]

def count_opens(event, args):  # inherited by the forked DataLoader workers: counts their opens too
    if event == "open" and str(args[0]) == tar:
        with open(log, "a") as f:
            f.write("open\\n")

sys.addaudithook(count_opens)
import numpy as np
from curation.filter_network import load_filter_network
from curation.score import score_shard
from shared.config.curation import FilterNetworkConfig
net = load_filter_network(FilterNetworkConfig(model="own"), Path(sys.argv[1]))
with_workers = score_shard(Path(tar), net, batch_size=2, num_workers=int(sys.argv[2]))
print(with_workers[1].tolist())
"""


def test_one_read_per_tar_with_decode_workers(setup, tmp_path):
    """A shard's tar is opened once per scoring, by the scoring process, with 2 decode workers as with
    none (audit hook on open, in every process); the scores are the same."""
    root, net_dir = setup
    tar = str(root / "pool" / "00001.tar")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    scores = {}
    for workers in (2, 0):
        log = tmp_path / f"opens-{workers}.log"
        out = subprocess.run([sys.executable, "-c", READS_SCRIPT, str(net_dir), str(workers), tar, str(log)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        assert log.read_text().splitlines() == ["open"], workers
        scores[workers] = json.loads(out.stdout.strip().splitlines()[-1])
    assert scores[2] == scores[0] and len(scores[0]) > 0
