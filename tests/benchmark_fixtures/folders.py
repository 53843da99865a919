"""Benchmarks stored as image folders: generic class folders, ImageNet-1k (val sorted or flat with its
labels), EuroSAT.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from tests.benchmark_fixtures.images import write_image


def make_image_folder(
    root: Path, classes: list[str], n_train: int, n_test: int, test_dir: str = "test", ext: str = "png"
) -> dict:
    for label, name in enumerate(classes):
        for i in range(n_train):
            write_image(root / "train" / name / f"{i}.{ext}", label)
        for i in range(n_test):
            write_image(root / test_dir / name / f"{i}.{ext}", label)
    return {"train": n_train * len(classes), "test": n_test * len(classes), "classes": len(classes)}


def make_imagenet(root: Path) -> dict:
    return make_image_folder(root, [f"n0{i:07d}" for i in range(3)], 4, 2, test_dir="val", ext="JPEG")


IMAGENET_VAL_LABELS = [
    2,
    0,
    1,
    1,
    2,
    0,
    2,
]  # label of ILSVRC2012_val_0000000<i+1>.JPEG (train's sorted wnids)


def make_imagenet_flat_val(root: Path, labels_from: str) -> dict:
    """ImageNet as the official tars extract: train/<wnid>/ (ILSVRC2012_img_train.tar's per-class tars), a
    flat val/ (ILSVRC2012_img_val.tar: ILSVRC2012_val_<8 digits>.JPEG), and the labels from
    ``labels_from``: "kaggle" (LOC_val_solution.csv), "devkit" (ILSVRC2012_devkit_t12/ extracted),
    "devkit_tar" (ILSVRC2012_devkit_t12.tar.gz as downloaded) or "none"."""
    import scipy.io

    wnids = ["n01440764", "n01443537", "n01484850"]
    for label, wnid in enumerate(wnids):
        for i in range(4):
            write_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", label, "JPEG")
    names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(IMAGENET_VAL_LABELS))]
    for name, label in zip(names, IMAGENET_VAL_LABELS, strict=True):
        write_image(root / "val" / name, label, "JPEG")
    if labels_from == "kaggle":
        lines = ["ImageId,PredictionString"]  # rows in no particular order, as Kaggle's file
        for name, label in sorted(zip(names, IMAGENET_VAL_LABELS, strict=True), key=lambda x: x[0][::-1]):
            wnid = wnids[label]
            lines.append(f"{Path(name).stem},{wnid} 10 20 200 180 {wnid} 5 5 60 70 ")
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    elif labels_from in ("devkit", "devkit_tar"):
        # meta.mat as the devkit ships it: one record per synset, ILSVRC2012_ID 1..1000 for the leaves (not in
        # wnid order) and higher ids for the inner nodes (num_children > 0), fields in the devkit's order
        fields = [
            "ILSVRC2012_ID",
            "WNID",
            "words",
            "gloss",
            "num_children",
            "children",
            "wordnet_height",
            "num_train_images",
        ]
        ids = {wnids[2]: 1, wnids[0]: 2, wnids[1]: 3}
        synsets = np.zeros((len(wnids) + 1, 1), dtype=[(f, "O") for f in fields])
        for k, wnid in enumerate(sorted(ids, key=ids.get)):
            synsets[k, 0] = (
                np.uint16(ids[wnid]),
                wnid,
                f"words of {wnid}, synonym",
                "a gloss",
                np.uint8(0),
                np.zeros((1, 0), dtype=np.uint8),
                np.uint8(0),
                np.uint16(1300),
            )
        synsets[len(wnids), 0] = (
            np.uint16(1001),
            "n00001740",
            "entity",
            "the root",
            np.uint8(3),
            np.array([[1, 2, 3]], dtype=np.uint16),
            np.uint8(19),
            np.uint16(0),
        )
        truth = "".join(f"{ids[wnids[label]]}\n" for label in IMAGENET_VAL_LABELS)
        data = root / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(truth)
        if labels_from == "devkit_tar":
            with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
                tar.add(root / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
            import shutil

            shutil.rmtree(root / "ILSVRC2012_devkit_t12")
    return {"train": 12, "test": len(names), "classes": 3}


def make_eurosat(root: Path) -> dict:
    classes = [
        "AnnualCrop",
        "Forest",
        "HerbaceousVegetation",
        "Highway",
        "Industrial",
        "Pasture",
        "PermanentCrop",
        "Residential",
        "River",
        "SeaLake",
    ]
    for label, name in enumerate(classes):
        for i in range(5):
            write_image(root / "2750" / name / f"{name}_{i}.jpg", label)
    # fixed 60/20/20 of 50 images
    return {"train": 30, "val": 10, "test": 10, "classes": 10}
