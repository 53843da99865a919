"""The benchmark registry and loaders, on tiny copies of each real offline layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.benchmarks.registry import (
    BENCHMARKS,
    DEMO_BENCHMARKS,
    PAPER_BENCHMARKS,
    benchmark_root,
    load_split,
    missing_reason,
    resolve_benchmarks,
)
from shared.config.root import OpenAIMConfig
from shared.errors import ConfigError, InputError
from tests.benchmark_fixtures import PAPER_MAKERS
from tests.benchmark_fixtures.folders import IMAGENET_VAL_LABELS, make_image_folder, make_imagenet_flat_val
from tests.benchmark_fixtures.images import SIZE, corrupt, label_from_red, write_image
from tests.benchmark_fixtures.indexed import INAT_SPECIES, make_dtd, make_food101, make_inat2018, make_pcam
from tests.benchmark_fixtures.wds_export import make_wds
from tests.benchmark_fixtures.wilds import make_fmow, make_iwildcam


def _config(tmp_path: Path) -> OpenAIMConfig:
    cfg = OpenAIMConfig(workdir=tmp_path / "run")
    cfg.evaluation.data_root = str(tmp_path / "data")
    return cfg


def _check_items(ds, n_classes: int) -> None:
    """Every item is (RGB PIL image, int label), the label is in range and matches the image's colour."""
    assert len(ds.labels) == len(ds)
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.mode == "RGB"
        assert isinstance(label, int) and 0 <= label < n_classes
        assert label == int(ds.labels[i])
        red = image.getpixel((image.width // 2, image.height // 2))[0]
        assert label_from_red(red) == label % 40, (i, red, label)


def test_registry_names_and_order():
    assert PAPER_BENCHMARKS == [
        "imagenet-1k",
        "inat-2018",
        "cifar-10",
        "cifar-100",
        "food-101",
        "dtd",
        "pets",
        "cars",
        "iwildcam",
        "camelyon17",
        "pcam",
        "rxrx1",
        "eurosat",
        "fmow",
        "domainnet-infograph",
    ]
    assert DEMO_BENCHMARKS == ["miniweb-shape", "miniweb-color", "miniweb-count", "miniweb-texture", "digits"]
    assert set(BENCHMARKS) == set(PAPER_BENCHMARKS) | set(DEMO_BENCHMARKS)
    for name in PAPER_BENCHMARKS:
        spec = BENCHMARKS[name]
        assert spec.num_classes and spec.train_size and spec.test_size and spec.default_subdir
        assert spec.how_to_get and spec.test_split and spec.val_split and spec.required
    assert [s.name for s in resolve_benchmarks(["all"])] == PAPER_BENCHMARKS + DEMO_BENCHMARKS
    assert [s.name for s in resolve_benchmarks(["demo", "digits", "cifar-10"])] == DEMO_BENCHMARKS + [
        "cifar-10"
    ]


def test_unknown_benchmark_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        resolve_benchmarks(["cifar-10", "cifar-1000"])
    message = str(err.value)
    assert "cifar-1000" in message and "cifar-100," in message and "\n" not in message
    with pytest.raises(ConfigError):
        resolve_benchmarks(["imagefolder:"])


@pytest.mark.parametrize("name", PAPER_BENCHMARKS)
def test_paper_layout_loads(tmp_path, name):
    cfg = _config(tmp_path)
    spec = BENCHMARKS[name]
    root = benchmark_root(spec, cfg.evaluation.data_root, cfg.web_dir)
    assert root == tmp_path / "data" / spec.default_subdir
    reason = missing_reason(spec, root)
    assert reason is not None and str(root) in reason and "get it" in reason and "\n" not in reason
    expected = PAPER_MAKERS[name](root)
    assert missing_reason(spec, root) is None

    train = load_split(spec, root, "train", val_fraction=0.25, seed=3)
    val = load_split(spec, root, "val", val_fraction=0.25, seed=3)
    test = load_split(spec, root, "test")
    assert len(test) == expected["test"]
    if spec.official_val:
        assert (len(train), len(val)) == (expected["train"], expected["val"])
    else:
        assert len(train) + len(val) == expected["train"]
        assert len(val) == round(expected["train"] * 0.25)
    assert len(train.classes) == expected["classes"] == len(test.classes)
    assert train.classes == test.classes
    for ds in (train, val, test):
        _check_items(ds, len(train.classes))
    # val is carved from train: disjoint, deterministic, and never from the test pool
    train_keys, val_keys, test_keys = (set(ds.item_keys()) for ds in (train, val, test))
    assert len(train_keys) == len(train) and len(val_keys) == len(val) and len(test_keys) == len(test)
    assert not train_keys & val_keys and not (train_keys | val_keys) & test_keys
    again = load_split(spec, root, "val", val_fraction=0.25, seed=3)
    assert np.array_equal(again.indices, val.indices)
    if spec.official_val:
        return
    other = load_split(spec, root, "val", val_fraction=0.25, seed=4)
    assert len(other) == len(val)
    # stratified: every class of a train pool with >= 4 items per class is represented in val
    counts = np.bincount(np.concatenate([train.labels, val.labels]))
    if counts[counts > 0].min() >= 4:
        assert set(val.labels) == set(np.flatnonzero(counts))


def test_cap_is_stratified_and_deterministic(tmp_path):
    root = tmp_path / "data" / "food-101"
    make_food101(root)
    spec = BENCHMARKS["food-101"]
    a = load_split(spec, root, "train", val_fraction=0.25, max_items=6)
    b = load_split(spec, root, "train", val_fraction=0.25, max_items=6)
    assert len(a) == 6 and np.array_equal(a.indices, b.indices)
    assert sorted(np.bincount(a.labels).tolist()) == [2, 2, 2]
    full = load_split(spec, root, "train", val_fraction=0.25)
    assert set(a.indices) <= set(full.indices)


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    root = tmp_path / "data" / "food-101"
    make_food101(root)
    corrupt(root / "images" / "baklava" / "test1.jpg")
    (root / "images" / "apple_pie" / "test0.jpg").unlink()  # listed in test.json but gone
    test = load_split(BENCHMARKS["food-101"], root, "test")
    items = [test[i] for i in range(len(test))]
    assert sum(item is None for item in items) == 2
    assert test.skipped == 2
    from evaluation.benchmarks.items import collate_skip_none

    (images, labels), dropped = collate_skip_none(items)
    assert dropped == 2 and len(images) == len(labels) == len(test) - 2
    # through a DataLoader with tensors: the readable ones are stacked, the dropped ones counted
    import torch
    import torchvision.transforms.functional as F
    from torch.utils.data import DataLoader, Dataset

    class AsTensors(Dataset):
        def __len__(self):
            return len(test)

        def __getitem__(self, i):
            item = test[i]
            return None if item is None else (F.to_tensor(item[0]), item[1])

    total, kept = 0, 0
    for batch, n_dropped in DataLoader(AsTensors(), batch_size=4, collate_fn=collate_skip_none):
        total += n_dropped
        if batch is not None:
            assert isinstance(batch[0], torch.Tensor) and batch[0].shape[1:] == (3, SIZE, SIZE)
            kept += len(batch[1])
    assert (total, kept) == (2, len(test) - 2)


def test_missing_benchmark_raises_input_error_on_load(tmp_path):
    spec = BENCHMARKS["cifar-10"]
    root = tmp_path / "nowhere" / spec.default_subdir
    with pytest.raises(InputError, match="nowhere"):
        load_split(spec, root, "train")
    with pytest.raises(ConfigError):
        load_split(spec, root, "validation")


def test_broken_index_is_a_one_line_input_error(tmp_path):
    root = tmp_path / "data" / "iwildcam_v2.0"
    make_iwildcam(root)
    (root / "metadata.csv").write_text("split,filename\ntrain,a.jpg\n")
    with pytest.raises(InputError, match="missing column"):
        load_split(BENCHMARKS["iwildcam"], root, "test")


def test_miniweb_and_digits(tmp_path):
    cfg = _config(tmp_path)
    spec = BENCHMARKS["miniweb-shape"]
    root = benchmark_root(spec, cfg.evaluation.data_root, cfg.web_dir)
    assert root == cfg.web_dir / "bench" / "miniweb-shape"
    assert "miniweb-shape" in missing_reason(spec, root)
    make_image_folder(root, ["circle", "square", "triangle"], 5, 2)
    train = load_split(spec, root, "train", val_fraction=0.2)
    test = load_split(spec, root, "test")
    assert (len(train), len(test), train.classes) == (12, 6, ["circle", "square", "triangle"])
    _check_items(test, 3)

    digits = BENCHMARKS["digits"]
    assert missing_reason(digits, benchmark_root(digits, cfg.evaluation.data_root, cfg.web_dir)) is None
    tr = load_split(digits, ".", "train", val_fraction=0.1)
    va = load_split(digits, ".", "val", val_fraction=0.1)
    te = load_split(digits, ".", "test")
    assert len(tr) + len(va) + len(te) == 1797 and len(te) == 539
    keys = [set(ds.item_keys()) for ds in (tr, va, te)]
    assert len(set.union(*keys)) == 1797
    image, label = te[0]
    assert image.mode == "RGB" and image.size == (32, 32) and 0 <= label < 10
    assert sorted(set(te.labels.tolist())) == list(range(10))


def test_generic_image_folder_and_webdataset(tmp_path):
    folder = tmp_path / "my set"
    make_image_folder(folder, ["a", "b"], 4, 3, test_dir="val")
    (folder / "val" / "b").rename(folder / "val" / "b_tmp")  # a test folder missing a class keeps labels
    (folder / "val" / "b_tmp").rename(folder / "val" / "b")
    [spec] = resolve_benchmarks([f"imagefolder:{folder}"])
    assert "/" not in spec.name and spec.name.startswith("imagefolder-my_set-")
    cfg = _config(tmp_path)
    root = benchmark_root(spec, cfg.evaluation.data_root, cfg.web_dir)
    assert missing_reason(spec, root) is None
    test = load_split(spec, root, "test")
    assert len(test) == 6 and test.classes == ["a", "b"]
    _check_items(test, 2)

    wds_root = tmp_path / "wds_cars"
    expected = make_wds(wds_root)
    [wspec] = resolve_benchmarks([f"wds:{wds_root}"])
    assert wspec.name.startswith("webdataset-wds_cars-")
    wroot = benchmark_root(wspec, cfg.evaluation.data_root, cfg.web_dir)
    train = load_split(wspec, wroot, "train", val_fraction=0.25)
    val = load_split(wspec, wroot, "val", val_fraction=0.25)
    test = load_split(wspec, wroot, "test")
    assert len(train) + len(val) == expected["train"] and len(test) == expected["test"]
    assert test.classes == ["cat", "dog", "bird"]
    for ds in (train, val, test):
        _check_items(ds, 3)
    assert missing_reason(wspec, tmp_path / "empty") is not None


def test_test_folder_with_unknown_class_is_rejected(tmp_path):
    folder = tmp_path / "set"
    make_image_folder(folder, ["a", "b"], 2, 1)
    write_image(folder / "test" / "zebra" / "0.png", 0)
    [spec] = resolve_benchmarks([f"imagefolder:{folder}"])
    with pytest.raises(InputError, match="zebra"):
        load_split(spec, folder, "test")


class _ToTensorItems:
    """Top-level (picklable) wrapper: (tensor, label) or None, as a feature extractor would use it."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        import torchvision.transforms.functional as F

        item = self.dataset[i]
        return None if item is None else (F.to_tensor(item[0]), item[1])


def test_datasets_pickle_and_run_in_dataloader_workers(tmp_path):
    """Datasets survive pickling (spawn-started workers) with an open h5 handle, and corrupt-image counts
    come back from real worker processes through collate_skip_none."""
    import pickle

    import torch
    from torch.utils.data import DataLoader

    from evaluation.benchmarks.items import collate_skip_none

    pcam_root = tmp_path / "data" / "pcam"
    make_pcam(pcam_root)
    pcam = load_split(BENCHMARKS["pcam"], pcam_root, "train", val_fraction=0.2)
    first = pcam[0]  # opens the h5 handle in this process
    clone = pickle.loads(pickle.dumps(pcam))
    assert clone[0][1] == first[1] and clone[0][0].tobytes() == first[0].tobytes()
    food_root = tmp_path / "data" / "food-101"
    make_food101(food_root)
    corrupt(food_root / "images" / "baklava" / "test1.jpg")
    food = load_split(BENCHMARKS["food-101"], food_root, "test")
    for ds, n_bad in ((pcam, 0), (food, 1)):
        loader = DataLoader(_ToTensorItems(ds), batch_size=3, num_workers=2, collate_fn=collate_skip_none)
        labels, dropped = [], 0
        for batch, n_dropped in loader:
            dropped += n_dropped
            if batch is not None:
                labels += batch[1].tolist()
                assert batch[0].dtype == torch.float32
        assert dropped == n_bad and len(labels) == len(ds) - n_bad
        assert sorted(labels) == sorted(int(y) for i, y in enumerate(ds.labels) if ds[i] is not None)


def test_every_spec_names_its_loader_directly():
    """A spec's loader is the function itself (go-to-definition works), not a "module:function" string."""
    import inspect

    from evaluation.benchmarks.registry import BENCHMARKS, generic_spec

    for spec in [*BENCHMARKS.values(), generic_spec("imagefolder:/x"), generic_spec("wds:/x")]:
        assert inspect.isfunction(spec.loader), spec.name
        assert spec.loader.__module__.startswith("evaluation.benchmarks."), spec.name


@pytest.mark.parametrize("labels_from", ["kaggle", "devkit", "devkit_tar"])
def test_imagenet_flat_val_is_labelled_like_torchvision(tmp_path, monkeypatch, labels_from):
    """The flat val/ of ILSVRC2012_img_val.tar with Kaggle's LOC_val_solution.csv or the devkit: the labels
    agree with torchvision's own devkit parser (run on the same devkit, its md5 check switched off)."""
    import tarfile

    import torch
    import torchvision.datasets.imagenet as tv_imagenet

    root = tmp_path / "imagenet"
    expected = make_imagenet_flat_val(root, labels_from)
    spec = BENCHMARKS["imagenet-1k"]
    assert missing_reason(spec, root) is None
    test = load_split(spec, root, "test")
    assert len(test) == expected["test"] and len(test.classes) == 3
    _check_items(test, 3)
    assert [int(y) for y in test.labels] == IMAGENET_VAL_LABELS
    if labels_from == "devkit_tar":
        monkeypatch.setattr(tv_imagenet, "_verify_archive", lambda *a, **k: None)
        tv_imagenet.parse_devkit_archive(str(root))
        _, val_wnids = torch.load(root / tv_imagenet.META_FILE, weights_only=True)
        assert [test.classes[int(y)] for y in test.labels] == val_wnids
        with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz") as tar:
            assert "ILSVRC2012_devkit_t12/data/meta.mat" in tar.getnames()
    train = load_split(spec, root, "train", val_fraction=0.25)
    assert train.classes == test.classes


def test_imagenet_flat_val_without_labels_names_what_to_add(tmp_path):
    root = tmp_path / "imagenet"
    make_imagenet_flat_val(root, "none")
    with pytest.raises(InputError) as err:
        load_split(BENCHMARKS["imagenet-1k"], root, "test")
    assert "LOC_val_solution.csv" in str(err.value) and "ILSVRC2012_devkit_t12" in str(err.value)


def test_fmow_fixture_mixes_the_two_timestamp_forms(tmp_path):
    """The fixture reproduces the release's ugliness (WILDS issue #146): pandas' one-format parse rejects
    it, while the loader reads every row."""
    import pandas as pd

    root = tmp_path / "fmow_v1.1"
    make_fmow(root)
    stamps = pd.read_csv(root / "rgb_metadata.csv")["timestamp"]
    assert stamps.str.contains(r"\.\d{3}Z$").any() and stamps.str.contains(r":\d{2}Z$").any()
    with pytest.raises(ValueError):
        pd.to_datetime(stamps)
    assert len(load_split(BENCHMARKS["fmow"], root, "test")) == 6


def test_dtd_official_tar_layout_reads_like_torchvision(tmp_path):
    """DTD from its official tar (<data_root>/dtd/{images,labels}) and from torchvision's download
    (<data_root>/dtd/dtd/...) give the same items; on the latter our reader agrees with torchvision.DTD."""
    import torchvision.datasets as tvd

    spec = BENCHMARKS["dtd"]
    tv_root, official_root = tmp_path / "a" / "dtd", tmp_path / "b" / "dtd"
    make_dtd(tv_root, "torchvision")
    make_dtd(official_root, "official")
    assert "other layout" in missing_reason(spec, tmp_path / "c" / "dtd")
    splits = {}
    for root in (tv_root, official_root):
        assert missing_reason(spec, root) is None
        pool = spec.pools(root, "test")
        _check_items(pool, 3)
        splits[root] = (
            pool.classes,
            [int(y) for y in pool.labels],
            [Path(k).relative_to(root).parts[-2:] for k in pool.item_keys()],
        )
    assert splits[tv_root] == splits[official_root]
    for ours, theirs in (("train", ["train", "val"]), ("test", ["test"])):
        tv = [tvd.DTD(str(tv_root.parent), split=s, partition=1, download=False) for s in theirs]
        pool = spec.pools(tv_root, ours)
        assert pool.classes == tv[0].classes
        assert [int(y) for y in pool.labels] == [y for d in tv for y in d._labels]
        assert [Path(k) for k in pool.item_keys()] == [Path(f) for d in tv for f in d._image_files]


def test_inat_class_names_come_from_categories_json(tmp_path):
    spec = BENCHMARKS["inat-2018"]
    plain, named = tmp_path / "a" / "inat2018", tmp_path / "b" / "inat2018"
    make_inat2018(plain)
    make_inat2018(named, with_categories_json=True)
    assert load_split(spec, plain, "test").classes == ["0", "1", "2"]  # the listings' obfuscated names
    test = load_split(spec, named, "test")
    assert test.classes == [INAT_SPECIES[i] for i in range(3)]
    _check_items(test, 3)
