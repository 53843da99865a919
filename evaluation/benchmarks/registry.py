"""The benchmark registry: the paper's 15 sets, the demo sets, and how to find and load each.

    specs = resolve_benchmarks(cfg.evaluation.benchmarks)        # "all", "paper", "demo", names, generic
    for spec in specs:
        root = benchmark_root(spec, cfg)
        if (reason := missing_reason(spec, root)):                # reported, never fatal
            log.warning(reason); continue
        train = load_split(spec, root, "train", val_fraction, seed, max_items)
        val = load_split(spec, root, "val", val_fraction, seed)   # carved from train, disjoint from it
        test = load_split(spec, root, "test")

Splits: "test" is always an official split (named in spec.test_split); "val" is carved out of the
official train split (seeded, stratified by label), except where a layout fixes its own val (EuroSAT's
seeded 60/20/20 split); "train" is the rest. Nothing is ever taken from test.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation.benchmarks.spec import BenchmarkSpec
from shared.errors import ConfigError, InputError

if TYPE_CHECKING:
    from evaluation.benchmarks.items import SplitView
    from shared.config.root import OpenAIMConfig

_TV = "python -c \"import torchvision.datasets as d; d.{cls}('<data_root>', {args}download=True)\""
_WILDS = (
    'pip install wilds && python -c "from wilds import get_dataset; '
    "get_dataset('{name}', root_dir='<data_root>', download=True)\""
)
_CARVED = "val_fraction of the official train split, seeded, stratified by label"

_PAPER = [
    BenchmarkSpec(
        "imagenet-1k",
        "ImageNet-1k",
        1000,
        "train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (image folder)",
        1_281_167,
        50_000,
        "https://image-net.org/download-images (ILSVRC2012 train+val tars; sort val into <wnid>/ folders)",
        "imagenet",
        "official val (50,000)",
        _CARVED,
        required=("train", "val"),
        loader="evaluation.benchmarks.generic:imagenet",
    ),
    BenchmarkSpec(
        "inat-2018",
        "iNaturalist 2018",
        8142,
        "train2018.json, val2018.json (COCO-style) + train_val2018/",
        437_513,
        24_426,
        "https://github.com/visipedia/inat_comp/tree/master/2018 (train_val2018.tar.gz, train2018.json.tar.gz, "
        "val2018.json.tar.gz) extracted into <data_root>/inat2018",
        "inat2018",
        "val2018.json (24,426)",
        _CARVED,
        required=("train2018.json", "val2018.json", "train_val2018"),
        loader="evaluation.benchmarks.inaturalist:inat2018",
    ),
    BenchmarkSpec(
        "cifar-10",
        "CIFAR-10",
        10,
        "cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (pickled)",
        50_000,
        10_000,
        _TV.format(cls="CIFAR10", args=""),
        "cifar-10-batches-py",
        "test_batch (10,000)",
        _CARVED,
        required=(
            "data_batch_1",
            "data_batch_2",
            "data_batch_3",
            "data_batch_4",
            "data_batch_5",
            "test_batch",
            "batches.meta",
        ),
        loader="evaluation.benchmarks.torchvision_sets:cifar10",
    ),
    BenchmarkSpec(
        "cifar-100",
        "CIFAR-100",
        100,
        "cifar-100-python/train, test, meta (pickled, fine labels)",
        50_000,
        10_000,
        _TV.format(cls="CIFAR100", args=""),
        "cifar-100-python",
        "test (10,000)",
        _CARVED,
        required=("train", "test", "meta"),
        loader="evaluation.benchmarks.torchvision_sets:cifar100",
    ),
    BenchmarkSpec(
        "food-101",
        "Food-101",
        101,
        "food-101/meta/{train,test}.json + images/<class>/<id>.jpg",
        75_750,
        25_250,
        _TV.format(cls="Food101", args=""),
        "food-101",
        "meta/test.json (25,250)",
        _CARVED,
        required=("meta/train.json", "meta/test.json", "images"),
        loader="evaluation.benchmarks.torchvision_sets:food101",
    ),
    BenchmarkSpec(
        "dtd",
        "Describable Textures (DTD)",
        47,
        "dtd/dtd/labels/{train1,val1,test1}.txt + dtd/dtd/images/",
        3_760,
        1_880,
        _TV.format(cls="DTD", args=""),
        "dtd",
        "test1.txt (fold 1, 1,880)",
        "val_fraction of train1+val1 (fold 1, pooled as our train), seeded, stratified",
        required=("dtd/labels/train1.txt", "dtd/labels/val1.txt", "dtd/labels/test1.txt", "dtd/images"),
        notes="fold 1 only; the official val1 is pooled into train",
        loader="evaluation.benchmarks.torchvision_sets:dtd",
    ),
    BenchmarkSpec(
        "pets",
        "Oxford-IIIT Pets",
        37,
        "oxford-iiit-pet/annotations/{trainval,test}.txt + images/*.jpg",
        3_680,
        3_669,
        _TV.format(cls="OxfordIIITPet", args=""),
        "oxford-iiit-pet",
        "test.txt (3,669)",
        "val_fraction of trainval.txt, seeded, stratified",
        required=("annotations/trainval.txt", "annotations/test.txt", "images"),
        loader="evaluation.benchmarks.torchvision_sets:pets",
    ),
    BenchmarkSpec(
        "cars",
        "Stanford Cars",
        196,
        "stanford_cars/devkit/{cars_meta,cars_train_annos}.mat, cars_test_annos_withlabels.mat, cars_train/, cars_test/",
        8_144,
        8_041,
        "no official download any more: get a mirror (e.g. Kaggle 'stanford-cars-dataset' + "
        "cars_test_annos_withlabels.mat) and arrange it as <data_root>/stanford_cars (torchvision layout)",
        "stanford_cars",
        "cars_test_annos_withlabels.mat (8,041)",
        _CARVED,
        required=(
            "devkit/cars_meta.mat",
            "devkit/cars_train_annos.mat",
            "cars_test_annos_withlabels.mat",
            "cars_train",
            "cars_test",
        ),
        loader="evaluation.benchmarks.torchvision_sets:stanford_cars",
    ),
    BenchmarkSpec(
        "iwildcam",
        "iWildCam (WILDS)",
        182,
        "iwildcam_v2.0/metadata.csv (split, filename, y) + train/<filename>",
        129_809,
        42_791,
        _WILDS.format(name="iwildcam"),
        "iwildcam_v2.0",
        "WILDS 'test' (OOD camera traps, 42,791)",
        "val_fraction of WILDS 'train', seeded, stratified (WILDS' own val/id_val are not used)",
        required=("metadata.csv", "train"),
        loader="evaluation.benchmarks.wilds:iwildcam",
    ),
    BenchmarkSpec(
        "camelyon17",
        "Camelyon17 (WILDS)",
        2,
        "camelyon17_v1.0/metadata.csv + patches/patient_PPP_node_N/*.png",
        302_436,
        85_054,
        _WILDS.format(name="camelyon17"),
        "camelyon17_v1.0",
        "WILDS 'test' = hospital (center) 2 (85,054)",
        "val_fraction of WILDS 'train' (split 0, centers 0/3/4), seeded, stratified",
        required=("metadata.csv", "patches"),
        loader="evaluation.benchmarks.wilds:camelyon17",
    ),
    BenchmarkSpec(
        "pcam",
        "PatchCamelyon",
        2,
        "pcam/camelyonpatch_level_2_split_{train,test}_{x,y}.h5",
        262_144,
        32_768,
        _TV.format(cls="PCAM", args="split='train', ") + " (and split='test'; needs gdown, h5py)",
        "pcam",
        "official test h5 (32,768)",
        _CARVED + " (the official valid h5 is not used)",
        required=tuple(f"camelyonpatch_level_2_split_{s}_{xy}.h5" for s in ("train", "test") for xy in "xy"),
        loader="evaluation.benchmarks.torchvision_sets:pcam",
    ),
    BenchmarkSpec(
        "rxrx1",
        "RxRx1 (WILDS)",
        1139,
        "rxrx1_v1.0/metadata.csv + images/<experiment>/Plate<p>/<well>_s<site>.png",
        40_612,
        34_432,
        _WILDS.format(name="rxrx1"),
        "rxrx1_v1.0",
        "WILDS 'test' (OOD experiments, 34,432)",
        "val_fraction of WILDS 'train' (site 1), seeded, stratified",
        required=("metadata.csv", "images"),
        loader="evaluation.benchmarks.wilds:rxrx1",
    ),
    BenchmarkSpec(
        "eurosat",
        "EuroSAT (RGB)",
        10,
        "eurosat/2750/<class>/*.jpg (class folders, no official split)",
        16_200,
        5_400,
        _TV.format(cls="EuroSAT", args=""),
        "eurosat",
        "20% of all images, fixed seeded stratified 60/20/20 split (seed 0)",
        "the fixed 20% val of the same 60/20/20 split (val_fraction and seed do not apply)",
        required=("2750",),
        official_val=True,
        notes="27,000 images in all",
        loader="evaluation.benchmarks.torchvision_sets:eurosat",
    ),
    BenchmarkSpec(
        "fmow",
        "Functional Map of the World (WILDS)",
        62,
        "fmow_v1.1/rgb_metadata.csv + images/rgb_img_<row>.png",
        76_863,
        22_108,
        _WILDS.format(name="fmow"),
        "fmow_v1.1",
        "WILDS 'test' (OOD: 2016 and later, 22,108)",
        "val_fraction of WILDS 'train' (before 2013), seeded, stratified",
        required=("rgb_metadata.csv", "images"),
        loader="evaluation.benchmarks.wilds:fmow",
    ),
    BenchmarkSpec(
        "domainnet-infograph",
        "DomainNet Infograph",
        345,
        "domainnet/infograph_{train,test}.txt ('infograph/<class>/<file>.jpg <label>') + infograph/",
        36_023,
        15_582,
        "http://ai.bu.edu/M3SDA/ (infograph.zip, infograph_train.txt, infograph_test.txt) into <data_root>/domainnet",
        "domainnet",
        "infograph_test.txt (15,582)",
        "val_fraction of infograph_train.txt, seeded, stratified",
        required=("infograph_train.txt", "infograph_test.txt", "infograph"),
        loader="evaluation.benchmarks.domainnet:domainnet",
    ),
]

MINIWEB_TASKS = ("miniweb-shape", "miniweb-color", "miniweb-count", "miniweb-texture")
_MINIWEB_GET = "openaim generate-web (the mini web writes <workdir>/web/bench/<task>)"
_DEMO = [
    BenchmarkSpec(
        task,
        f"mini web: {task.split('-', 1)[1]}",
        None,
        "<web_dir>/bench/<task>/{train,test}/<class>/*.png",
        None,
        None,
        _MINIWEB_GET,
        "",
        "test/ folder",
        _CARVED,
        kind="demo",
        required=("train", "test"),
        loader="evaluation.benchmarks.demo_sets:miniweb",
    )
    for task in MINIWEB_TASKS
] + [
    BenchmarkSpec(
        "digits",
        "scikit-learn digits (8x8, upscaled)",
        10,
        "sklearn.datasets.load_digits (bundled, no files)",
        1258,
        539,
        "bundled with scikit-learn",
        "",
        "30% of the 1,797 images, fixed seeded stratified split",
        _CARVED,
        kind="demo",
        loader="evaluation.benchmarks.demo_sets:digits",
    ),
]

BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _PAPER + _DEMO}
PAPER_BENCHMARKS: list[str] = [spec.name for spec in _PAPER]
DEMO_BENCHMARKS: list[str] = [spec.name for spec in _DEMO]

_GENERIC_PREFIXES = {"imagefolder": "imagefolder", "wds": "webdataset"}


def generic_spec(text: str) -> BenchmarkSpec:
    """The spec of ``imagefolder:<path>`` or ``wds:<path>``; its name is file-system safe."""
    prefix, _, path = text.partition(":")
    if prefix not in _GENERIC_PREFIXES or not path:
        raise ConfigError(f"unknown benchmark {text!r}")
    resolved = str(Path(path).expanduser().resolve())
    # the name is used in cache paths: keep it short, readable, and distinct for distinct folders
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(resolved).name) or "root"
    name = f"{_GENERIC_PREFIXES[prefix]}-{stem}-{hashlib.sha1(resolved.encode()).hexdigest()[:6]}"
    if prefix == "imagefolder":
        return BenchmarkSpec(
            name,
            f"image folder {path}",
            None,
            "<path>/{train,test}/<class>/* (or val/ instead of test/)",
            None,
            None,
            "any folder in this layout",
            resolved,
            "test/ (or val/)",
            _CARVED,
            kind="generic",
            required=("train",),
            loader="evaluation.benchmarks.generic:image_folder",
        )
    return BenchmarkSpec(
        name,
        f"webdataset {path}",
        None,
        "<path>/classnames.txt + <path>/{train,test}/*.tar (image + cls)",
        None,
        None,
        "clip_benchmark --dataset <name> --dataset_root <path> (CLIP_benchmark's wds export)",
        resolved,
        "test/*.tar",
        _CARVED,
        kind="generic",
        required=("classnames.txt", "train", "test"),
        loader="evaluation.benchmarks.generic:webdataset",
    )


def resolve_benchmarks(names: list[str]) -> list[BenchmarkSpec]:
    """ "all" (paper 15 + demo sets), "paper", "demo", registry names, imagefolder:<path>, wds:<path>;
    in the order given, each once."""
    out: dict[str, BenchmarkSpec] = {}
    for name in names:
        if name == "all":
            picked = [BENCHMARKS[n] for n in PAPER_BENCHMARKS + DEMO_BENCHMARKS]
        elif name == "paper":
            picked = [BENCHMARKS[n] for n in PAPER_BENCHMARKS]
        elif name == "demo":
            picked = [BENCHMARKS[n] for n in DEMO_BENCHMARKS]
        elif name in BENCHMARKS:
            picked = [BENCHMARKS[name]]
        elif name.split(":", 1)[0] in _GENERIC_PREFIXES and ":" in name:
            picked = [generic_spec(name)]
        else:
            valid = ", ".join(["all", "paper", "demo", *BENCHMARKS, "imagefolder:<path>", "wds:<path>"])
            raise ConfigError(f"unknown benchmark {name!r}; valid: {valid}")
        for spec in picked:
            out.setdefault(spec.name, spec)
    return list(out.values())


def benchmark_root(spec: BenchmarkSpec, cfg: OpenAIMConfig) -> Path:
    """Where ``spec``'s files live for this config (digits needs none: its root is ignored)."""
    if spec.kind == "demo":
        return Path(cfg.web_dir) / "bench" / spec.name if spec.name in MINIWEB_TASKS else Path(".")
    if spec.kind == "generic":
        return Path(spec.default_subdir)
    return Path(cfg.evaluation.data_root) / spec.default_subdir


def missing_reason(spec: BenchmarkSpec, root: str | Path) -> str | None:
    """None when the files are there; else one line: the path looked at and how to get the data."""
    root = Path(root)
    if spec.name == "digits":
        try:
            import sklearn.datasets  # noqa: F401
        except ImportError:
            return "digits: scikit-learn is not installed (pip install scikit-learn)"
        return None
    for rel in spec.required:
        if not (root / rel).exists():
            how = spec.how_to_get.replace("<data_root>", str(root.parent))
            return f"{spec.name}: not found: {root / rel} is missing; get it: {how}"
    return None


SPLITS = ("train", "val", "test")


def load_split(
    spec: BenchmarkSpec,
    root: str | Path,
    split: str,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_items: int | None = None,
) -> SplitView:
    """A torch Dataset of (PIL RGB image, int label), or None for an unreadable image (counted in
    ``.skipped``; batch with ``items.collate_skip_none``). Also ``.classes`` and ``.labels``.

    ``max_items`` caps the split with a stratified seeded sample (the same items on every call).
    """
    from evaluation.benchmarks.items import SplitView
    from evaluation.benchmarks.splits import cap, carve_val

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if max_items is not None and max_items < 1:
        raise ConfigError(f"max_items must be at least 1, got {max_items}")
    root = Path(root)
    reason = missing_reason(spec, root)
    if reason:
        raise InputError(reason)
    if not spec.loader:
        raise ConfigError(f"{spec.name}: no loader")
    import numpy as np

    if split == "test" or spec.official_val:
        pool = spec.pools(root, split)
        indices = np.arange(len(pool))
    else:
        pool = spec.pools(root, "train")
        train, val = carve_val(pool.labels, val_fraction, seed)
        indices = train if split == "train" else val
    indices = cap(indices, pool.labels[indices], max_items, seed + 1)
    return SplitView(pool, indices, split)
