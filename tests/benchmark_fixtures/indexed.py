"""Benchmarks indexed by json / txt / mat / pickle files: iNaturalist 2018, CIFAR-10/100, Food-101, DTD, Pets,
Stanford Cars, PCam, DomainNet.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from tests.benchmark_fixtures.images import SIZE, color_for, write_image

INAT_SPECIES = {0: "Quercus alba", 1: "Danaus plexippus", 2: "Amanita muscaria"}


def make_inat2018(root: Path, with_categories_json: bool = False) -> dict:
    """The 2018 release: train2018.json / val2018.json (COCO-style) whose categories carry obfuscated names
    (the id as text); categories.json, released later, has the real names and taxonomy."""
    cats = [{"id": cid, "name": str(cid), "supercategory": "Plantae"} for cid in (0, 1, 2)]
    if with_categories_json:
        root.mkdir(parents=True, exist_ok=True)
        (root / "categories.json").write_text(
            json.dumps(
                [
                    {
                        "id": cid,
                        "name": name,
                        "kingdom": "Plantae",
                        "supercategory": "Plantae",
                        "genus": name.split()[0],
                    }
                    for cid, name in INAT_SPECIES.items()
                ]
            )
        )
    splits = {"train": 4, "val": 2}
    image_id = 0
    for split, per_class in splits.items():
        images, anns = [], []
        for cid in (0, 1, 2):
            for _ in range(per_class):
                rel = f"train_val2018/Plantae/{cid}/{image_id:05d}.jpg"
                write_image(root / rel, cid)
                images.append({"id": image_id, "file_name": rel, "width": SIZE, "height": SIZE})
                anns.append({"id": image_id, "image_id": image_id, "category_id": cid})
                image_id += 1
        (root / f"{split}2018.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    return {"train": 12, "test": 6, "classes": 3}


def _cifar_batch(labels: list[int], labels_key: str) -> dict:
    data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    for i, y in enumerate(labels):
        data[i, 0], data[i, 1], data[i, 2] = color_for(y)
    return {"data": data.reshape(len(labels), 3072), labels_key: labels, "batch_label": "fixture"}


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def make_cifar10(root: Path) -> dict:
    for b in range(1, 6):
        _dump(root / f"data_batch_{b}", _cifar_batch([(b * 3 + i) % 10 for i in range(4)], "labels"))
    _dump(root / "test_batch", _cifar_batch([i % 10 for i in range(10)], "labels"))
    _dump(
        root / "batches.meta",
        {
            "label_names": [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ]
        },
    )
    return {"train": 20, "test": 10, "classes": 10}


def make_cifar100(root: Path) -> dict:
    train = _cifar_batch([i % 100 for i in range(0, 300, 3)], "fine_labels")  # 100 items
    train["coarse_labels"] = [y // 5 for y in train["fine_labels"]]
    test = _cifar_batch([i % 100 for i in range(20)], "fine_labels")
    test["coarse_labels"] = [y // 5 for y in test["fine_labels"]]
    _dump(root / "train", train)
    _dump(root / "test", test)
    _dump(
        root / "meta",
        {
            "fine_label_names": [f"fine{i:02d}" for i in range(100)],
            "coarse_label_names": [f"coarse{i:02d}" for i in range(20)],
        },
    )
    return {"train": 100, "test": 20, "classes": 100}


def make_food101(root: Path) -> dict:
    classes = ["apple_pie", "baby_back_ribs", "baklava"]  # sorted: label = position
    meta = {"train": {}, "test": {}}
    for label, name in enumerate(classes):
        for split, n in (("train", 4), ("test", 2)):
            ids = [f"{name}/{split}{i}" for i in range(n)]
            meta[split][name] = ids
            for rel in ids:
                write_image(root / "images" / f"{rel}.jpg", label)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    for split, listing in meta.items():
        (root / "meta" / f"{split}.json").write_text(json.dumps(listing))
    return {"train": 12, "test": 6, "classes": 3}


def make_dtd(root: Path, layout: str = "torchvision") -> dict:
    """``root`` = <data_root>/dtd. "torchvision": DTD(download=True)'s doubled <root>/dtd/{images,labels};
    "official": dtd-r1.0.1.tar.gz extracted into <data_root>, i.e. <root>/{images,labels,imdb}."""
    data = root / "dtd" if layout == "torchvision" else root
    if layout == "official":
        (data / "imdb").mkdir(parents=True, exist_ok=True)
        (data / "imdb" / "imdb.mat").write_bytes(b"MATLAB 5.0 MAT-file placeholder")
    classes = ["banded", "blotchy", "braided"]
    lines = {"train1": [], "val1": [], "test1": []}
    for label, name in enumerate(classes):
        for split, rows in lines.items():
            for i in range(2):
                fname = f"{name}_{split}_{i}.jpg"
                write_image(data / "images" / name / fname, label)
                rows.append(f"{name}/{fname}")
    (data / "labels").mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (data / "labels" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return {"train": 12, "test": 6, "classes": 3}  # train1 + val1 pooled


def make_pets(root: Path) -> dict:
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("american_pit_bull_terrier", 2)]
    rows = {"trainval": [], "test": []}
    for label, (breed, species) in enumerate(breeds):
        for split, n in (("trainval", 4), ("test", 2)):
            for i in range(n):
                image_id = f"{breed}_{split}{i}"
                write_image(root / "images" / f"{image_id}.jpg", label)
                rows[split].append(f"{image_id} {label + 1} {species} {i + 1}")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return {"train": 12, "test": 6, "classes": 3}


def make_stanford_cars(root: Path) -> dict:
    import scipy.io

    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        root / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object).reshape(1, -1)}
    )
    fields = [
        ("bbox_x1", "O"),
        ("bbox_y1", "O"),
        ("bbox_x2", "O"),
        ("bbox_y2", "O"),
        ("class", "O"),
        ("fname", "O"),
    ]
    for split, folder, mat, n in (
        ("train", "cars_train", root / "devkit" / "cars_train_annos.mat", 4),
        ("test", "cars_test", root / "cars_test_annos_withlabels.mat", 2),
    ):
        records = np.zeros((1, 3 * n), dtype=fields)
        k = 0
        for label in range(3):
            for i in range(n):
                fname = f"{split}_{label}_{i:03d}.jpg"
                write_image(root / folder / fname, label)
                records[0, k] = (0, 0, SIZE, SIZE, label + 1, fname)  # 1-based class, as in the devkit
                k += 1
        scipy.io.savemat(mat, {"annotations": records})
    return {"train": 12, "test": 6, "classes": 3}


def make_pcam(root: Path) -> dict:
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 10), ("test", 6), ("valid", 4)):
        labels = np.array([i % 2 for i in range(n)], dtype=np.uint8)
        x = np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8)
        for i, y in enumerate(labels):
            x[i] = color_for(int(y))
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x)
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=labels.reshape(n, 1, 1, 1))
    return {"train": 10, "test": 6, "classes": 2}


def make_domainnet(root: Path) -> dict:
    classes = ["aircraft_carrier", "airplane", "alarm_clock"]
    for split, n in (("train", 4), ("test", 2)):
        lines = []
        for label, name in enumerate(classes):
            for i in range(n):
                rel = f"infograph/{name}/infograph_{split}_{label}_{i}.jpg"
                write_image(root / rel, label)
                lines.append(f"{rel} {label}")
        (root / f"infograph_{split}.txt").write_text("\n".join(lines) + "\n")
    return {"train": 12, "test": 6, "classes": 3}
