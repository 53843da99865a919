"""The paper's 15 benchmarks (AIM, arXiv 2401.08541, table of frozen-trunk results), in its order.

Sizes are the official figures (train / test); folders are the ones the usual download tools create
under <data_root> (torchvision's, WILDS' <name>_v<version>), so a downloaded copy is found as is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from evaluation.benchmarks import domainnet, generic, inaturalist, torchvision_sets, wilds
from evaluation.benchmarks.items import LabelledImages
from evaluation.benchmarks.spec import BenchmarkSpec

_TV = "python -c \"import torchvision.datasets as d; d.{cls}('<data_root>', {args}download=True)\""
_WILDS = (
    'pip install wilds && python -c "from wilds import get_dataset; '
    "get_dataset('{name}', root_dir='<data_root>', download=True)\""
)
CARVED = "val_fraction of the official train split, seeded, stratified by label"


def _spec(name: str, title: str, classes: int, sizes: tuple[int, int], subdir: str, layout: str, get: str,
          test: str, val: str = CARVED, *, loader: Callable[[Path, str], LabelledImages],
          required: tuple[str, ...], **extra) -> BenchmarkSpec:
    return BenchmarkSpec(
        name=name, title=title, num_classes=classes, layout=layout, train_size=sizes[0], test_size=sizes[1],
        how_to_get=get, default_subdir=subdir, test_split=test, val_split=val, kind="paper",
        required=required, loader=loader, **extra,
    )


PAPER_SPECS: list[BenchmarkSpec] = [
    _spec(
        "imagenet-1k", "ImageNet-1k", 1000, (1_281_167, 50_000), "imagenet",
        "train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (image folder)",
        "https://image-net.org/download-images (ILSVRC2012 train+val tars; sort val into <wnid>/ folders)",
        "official val (50,000)", loader=generic.imagenet, required=("train", "val"),
    ),
    _spec(
        "inat-2018", "iNaturalist 2018", 8142, (437_513, 24_426), "inat2018",
        "train2018.json, val2018.json (COCO-style) + train_val2018/<kingdom>/<id>/*.jpg",
        "https://github.com/visipedia/inat_comp/tree/master/2018 (train_val2018.tar.gz, "
        "train2018.json, val2018.json) extracted into <data_root>/inat2018",
        "val2018.json (24,426)", loader=inaturalist.inat2018,
        required=("train2018.json", "val2018.json", "train_val2018"),
    ),
    _spec(
        "cifar-10", "CIFAR-10", 10, (50_000, 10_000), "cifar-10-batches-py",
        "cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (pickled)",
        _TV.format(cls="CIFAR10", args=""), "test_batch (10,000)", loader=torchvision_sets.cifar10,
        required=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
    ),
    _spec(
        "cifar-100", "CIFAR-100", 100, (50_000, 10_000), "cifar-100-python",
        "cifar-100-python/train, test, meta (pickled, fine labels)",
        _TV.format(cls="CIFAR100", args=""), "test (10,000)", loader=torchvision_sets.cifar100,
        required=("train", "test", "meta"),
    ),
    _spec(
        "food-101", "Food-101", 101, (75_750, 25_250), "food-101",
        "food-101/meta/{train,test}.json + images/<class>/<id>.jpg",
        _TV.format(cls="Food101", args=""), "meta/test.json (25,250)", loader=torchvision_sets.food101,
        required=("meta/train.json", "meta/test.json", "images"),
    ),
    _spec(
        "dtd", "Describable Textures (DTD)", 47, (3_760, 1_880), "dtd",
        "dtd/{labels/{train1,val1,test1}.txt, images/<class>/*.jpg} (the official tar) or torchvision's "
        "doubled dtd/dtd/{labels,images}",
        _TV.format(cls="DTD", args="") + " (or extract the official dtd-r1.0.1.tar.gz into <data_root>)",
        "test1.txt (fold 1, 1,880)",
        "val_fraction of train1+val1 (fold 1, pooled as our train), seeded, stratified",
        loader=torchvision_sets.dtd,
        required=tuple(tuple(f"{sub}/{rel}" if sub != "." else rel for rel in (
            "labels/train1.txt", "labels/val1.txt", "labels/test1.txt", "images")) for sub in ("dtd", ".")),
        notes="fold 1 only; the official val1 is pooled into train (1,880 + 1,880)",
    ),
    _spec(
        "pets", "Oxford-IIIT Pets", 37, (3_680, 3_669), "oxford-iiit-pet",
        "oxford-iiit-pet/annotations/{trainval,test}.txt + images/*.jpg",
        _TV.format(cls="OxfordIIITPet", args=""), "test.txt (3,669)",
        "val_fraction of trainval.txt, seeded, stratified", loader=torchvision_sets.pets,
        required=("annotations/trainval.txt", "annotations/test.txt", "images"),
    ),
    _spec(
        "cars", "Stanford Cars", 196, (8_144, 8_041), "stanford_cars",
        "stanford_cars/devkit/{cars_meta,cars_train_annos}.mat, cars_test_annos_withlabels.mat, "
        "cars_train/, cars_test/",
        "no official download any more: get a mirror (e.g. Kaggle 'stanford-cars-dataset' + "
        "cars_test_annos_withlabels.mat) arranged as <data_root>/stanford_cars (torchvision layout)",
        "cars_test_annos_withlabels.mat (8,041)", loader=torchvision_sets.stanford_cars,
        required=("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat",
                  "cars_train", "cars_test"),
    ),
    _spec(
        "iwildcam", "iWildCam (WILDS)", 182, (129_809, 42_791), "iwildcam_v2.0",
        "iwildcam_v2.0/metadata.csv (split, filename, y) + train/<filename>",
        _WILDS.format(name="iwildcam"), "WILDS 'test' (OOD camera traps, 42,791)",
        "val_fraction of WILDS 'train', seeded, stratified (WILDS' val / id_val unused)",
        loader=wilds.iwildcam, required=("metadata.csv", "train"),
    ),
    _spec(
        "camelyon17", "Camelyon17 (WILDS)", 2, (302_436, 85_054), "camelyon17_v1.0",
        "camelyon17_v1.0/metadata.csv + patches/patient_PPP_node_N/patch_..._x_X_y_Y.png",
        _WILDS.format(name="camelyon17"), "WILDS 'test' = hospital (center) 2 (85,054)",
        "val_fraction of WILDS 'train' (split 0 of centers 0/3/4), seeded, stratified",
        loader=wilds.camelyon17, required=("metadata.csv", "patches"),
    ),
    _spec(
        "pcam", "PatchCamelyon", 2, (262_144, 32_768), "pcam",
        "pcam/camelyonpatch_level_2_split_{train,test}_{x,y}.h5",
        _TV.format(cls="PCAM", args="split='train', ") + " (and split='test'; needs gdown and h5py)",
        "official test h5 (32,768)", CARVED + " (the official valid h5 is unused)",
        loader=torchvision_sets.pcam,
        required=tuple(f"camelyonpatch_level_2_split_{s}_{xy}.h5" for s in ("train", "test") for xy in "xy"),
    ),
    _spec(
        "rxrx1", "RxRx1 (WILDS)", 1139, (40_612, 34_432), "rxrx1_v1.0",
        "rxrx1_v1.0/metadata.csv + images/<experiment>/Plate<p>/<well>_s<site>.png",
        _WILDS.format(name="rxrx1"), "WILDS 'test' (OOD experiments, 34,432)",
        "val_fraction of WILDS 'train' (site 1), seeded, stratified",
        loader=wilds.rxrx1, required=("metadata.csv", "images"),
    ),
    _spec(
        "eurosat", "EuroSAT (RGB)", 10, (16_200, 5_400), "eurosat",
        "eurosat/2750/<class>/*.jpg (class folders, no official split)",
        _TV.format(cls="EuroSAT", args=""),
        "20% of the images: fixed seeded stratified 60/20/20 split (seed 0)",
        "the fixed 20% val of the same 60/20/20 split (val_fraction and seed do not apply)",
        loader=torchvision_sets.eurosat, required=("2750",), official_val=True,
        notes="27,000 images in all",
    ),
    _spec(
        "fmow", "Functional Map of the World (WILDS)", 62, (76_863, 22_108), "fmow_v1.1",
        "fmow_v1.1/rgb_metadata.csv + images/rgb_img_<row>.png",
        _WILDS.format(name="fmow"), "WILDS 'test' (OOD: 2016 and later, 22,108)",
        "val_fraction of WILDS 'train' (before 2013), seeded, stratified",
        loader=wilds.fmow, required=("rgb_metadata.csv", "images"),
    ),
    _spec(
        "domainnet-infograph", "DomainNet Infograph", 345, (36_023, 15_582), "domainnet",
        "domainnet/infograph_{train,test}.txt ('infograph/<class>/<file>.jpg <label>') + infograph/",
        "http://ai.bu.edu/M3SDA/ (infograph.zip, infograph_train.txt, infograph_test.txt) "
        "into <data_root>/domainnet",
        "infograph_test.txt (15,582)", "val_fraction of infograph_train.txt, seeded, stratified",
        loader=domainnet.domainnet, required=("infograph_train.txt", "infograph_test.txt", "infograph"),
    ),
]
