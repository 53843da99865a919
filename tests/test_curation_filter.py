"""The own filter network: trained on a tiny generated hq set it separates matched from mismatched pairs;
load_filter_network loads 'own', a local checkpoint folder, and fails in one line on what it cannot load."""

from __future__ import annotations

import io
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from curation.filter_network import load_filter_network
from curation.train_filter import train_filter_network
from shared.config.curation import FilterNetworkConfig, TrainFilterConfig
from shared.errors import InputError
from shared.miniweb.datasets import write_hq

TRAIN, HELD_OUT = 480, 96


def _pairs(tar_path):
    out = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            key, _, ext = m.name.rpartition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return [(v["jpg"], v["txt"].decode()) for _, v in sorted(out.items())]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("filter")
    write_hq(root / "all", seed=3, side=64, size=TRAIN + HELD_OUT, shard_size=TRAIN)
    # the first shard trains, the second is held out
    (root / "train").mkdir()
    (root / "all" / "hq" / "hq-00000.tar").rename(root / "train" / "hq-00000.tar")
    held = _pairs(root / "all" / "hq" / "hq-00001.tar")
    t0 = time.perf_counter()
    out = train_filter_network(TrainFilterConfig(), root / "train", root / "net", seed=0)
    return out, held, time.perf_counter() - t0


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_own_network_scores_matched_pairs_above_mismatched(trained):
    out, held, seconds = trained
    net = load_filter_network(FilterNetworkConfig(model="own"), out)
    assert net.model_id.startswith("own@")
    imgs = net.encode_images([Image.open(io.BytesIO(j)) for j, _ in held])
    txts = net.encode_texts([c for _, c in held])
    sims = imgs @ txts.T  # [n, n], both sides L2-normalised
    pos = np.diag(sims)
    neg = sims[~np.eye(len(held), dtype=bool)]
    auc = _auc(pos, neg)
    print(f"held-out AUC {auc:.3f}, training {seconds:.1f}s on {TRAIN} pairs")
    assert auc > 0.9


def test_local_checkpoint_folder_loads_the_same_network(trained):
    out, held, _ = trained
    own = load_filter_network(FilterNetworkConfig(model="own"), out)
    local = load_filter_network(FilterNetworkConfig(model="ignored", checkpoint=str(out)))
    caps = [c for _, c in held[:4]]
    np.testing.assert_allclose(own.encode_texts(caps), local.encode_texts(caps), atol=1e-6)


def test_own_without_training_is_one_line_input_error(tmp_path):
    with pytest.raises(InputError) as err:
        load_filter_network(FilterNetworkConfig(model="own"), tmp_path / "missing")
    assert "\n" not in str(err.value) and "train-filter" in str(err.value)


def test_unreachable_hub_model_fails_fast_in_one_line():
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        load_filter_network(FilterNetworkConfig(model="hf-hub:apple/DFN-public"))
    assert time.perf_counter() - t0 < 15
    assert "\n" not in str(err.value) and "apple/DFN-public" in str(err.value)


def test_unknown_model_and_missing_checkpoint_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown open_clip model"):
        load_filter_network(FilterNetworkConfig(model="No-Such-Model"))
    with pytest.raises(InputError, match="not found"):
        load_filter_network(FilterNetworkConfig(model="ViT-B-32", checkpoint=str(tmp_path / "x.pt")))


def test_train_on_empty_folder_is_input_error(tmp_path):
    with pytest.raises(InputError, match="hq-"):
        train_filter_network(TrainFilterConfig(epochs=1), tmp_path, tmp_path / "out")
