"""Tiny copies of each benchmark's real offline layout, written by the tests.

Every image is a solid colour whose red channel encodes the label the loader must give it
(``red_for(label)``), so a test can check that images and labels stay paired through a loader.
Each ``make_*`` writes under the benchmark's own folder and returns the expected sizes:
{"train": items in the official train pool, "test": items in the test split, "classes": n}.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 8


def red_for(label: int) -> int:
    return 20 + 5 * (label % 40)


def label_from_red(red: int) -> int:
    return round((red - 20) / 5)


def color_for(label: int) -> tuple[int, int, int]:
    return red_for(label), 90, 160


def write_image(path: Path, label: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), color_for(label)).save(path, format=fmt)


def image_bytes(label: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), color_for(label)).save(buf, format=fmt)
    return buf.getvalue()


def corrupt(path: Path) -> None:
    """Keep the file but break it: a JPEG/PNG header followed by garbage."""
    path.write_bytes(path.read_bytes()[:20] + b"\x00garbage" * 4)


# --- image folders ---


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


# --- json / txt / mat / pickle indexed ---


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


# --- WILDS ---


def make_iwildcam(root: Path) -> dict:
    import pandas as pd

    rows = []
    counts = {"train": 4, "val": 1, "test": 2, "id_val": 1, "id_test": 1}
    n = 0
    for split, per_class in counts.items():
        for y in range(3):
            for _ in range(per_class):
                filename = f"{n:08x}.jpg"
                write_image(root / "train" / filename, y)
                rows.append(
                    {
                        "split": split,
                        "location_remapped": y,
                        "location": 100 + y,
                        "sequence_remapped": n,
                        "y": y,
                        "datetime": "2013-06-01 10:00:00.000",
                        "filename": filename,
                    }
                )
                n += 1
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    pd.DataFrame({"y": [0, 1, 2], "category_id": [0, 3, 7], "name": ["empty", "deer", "fox"]}).to_csv(
        root / "categories.csv", index=False
    )
    return {"train": 12, "test": 6, "classes": 3}


def make_camelyon17(root: Path) -> dict:
    import pandas as pd

    rows = []
    # (center, split column, count): centers 0/3/4 train (split 0) + id_val (split 1), 1 = OOD val, 2 = test
    plan = [(0, 0, 4), (3, 0, 4), (4, 1, 2), (1, 0, 3), (2, 0, 3), (2, 1, 2)]
    for center, split, count in plan:
        for i in range(count):
            patient, node, x, y = 10 * center + 4, center % 5, 100 * i, 200 + 50 * len(rows)
            tumor = len(rows) % 2
            folder = f"patient_{patient:03d}_node_{node}"
            write_image(root / "patches" / folder / f"patch_{folder}_x_{x}_y_{y}.png", tumor)
            rows.append(
                {
                    "patient": f"{patient:03d}",
                    "node": node,
                    "x_coord": x,
                    "y_coord": y,
                    "tumor": tumor,
                    "slide": center * 10 + node,
                    "center": center,
                    "split": split,
                }
            )
    pd.DataFrame(rows).to_csv(root / "metadata.csv")  # WILDS' csv keeps a leading index column
    return {"train": 8, "test": 5, "classes": 2}


def make_rxrx1(root: Path) -> dict:
    import pandas as pd

    rows = []
    n_sirna = 4
    for dataset, experiment in (("train", "HEPG2-01"), ("val", "HEPG2-08"), ("test", "HEPG2-09")):
        for sirna_id in range(n_sirna):
            well = f"B{sirna_id + 2:02d}"
            for site in (1, 2):
                write_image(root / "images" / experiment / "Plate1" / f"{well}_s{site}.png", sirna_id)
                rows.append(
                    {
                        "site_id": f"{experiment}_1_{well}_{site}",
                        "well_id": f"{experiment}_1_{well}",
                        "cell_type": "HEPG2",
                        "dataset": dataset,
                        "experiment": experiment,
                        "plate": 1,
                        "well": well,
                        "site": site,
                        "well_type": "treatment",
                        "sirna": f"s{1000 + sirna_id}",
                        "sirna_id": sirna_id,
                    }
                )
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    # train = dataset train at site 1; test = dataset test, both sites
    return {"train": n_sirna, "test": 2 * n_sirna, "classes": n_sirna}


def make_fmow(root: Path) -> dict:
    import pandas as pd

    from evaluation.benchmarks.wilds import FMOW_CATEGORIES

    plan = [
        ("train", 2010, 3),
        ("train", 2014, 1),
        ("val", 2011, 1),
        ("seq", 2012, 1),
        ("test", 2017, 2),
        ("test", 2012, 1),
        ("val", 2016, 1),
        ("train", 2012, 1),
    ]
    rows = []
    for split, year, per_class in plan:
        for label in range(3):
            for _ in range(per_class):
                idx = len(rows)
                write_image(root / "images" / f"rgb_img_{idx}.png", label)
                rows.append(
                    {
                        "split": split,
                        "img_filename": f"x_{idx}_rgb.jpg",
                        "img_path": f"seq/x/{idx}",
                        "spatial_reference": "",
                        "epsg": 32601,
                        "category": FMOW_CATEGORIES[label],
                        "visible": True,
                        "img_width": SIZE,
                        "img_height": SIZE,
                        "country_code": "USA",
                        "cloud_cover": 0,
                        # the release mixes whole and fractional seconds (WILDS issue #146)
                        "timestamp": f"{year}-05-0{1 + label}T10:00:17Z"
                        if idx % 2
                        else f"{year}-05-0{1 + label}T10:00:56.643Z",
                        "lat": 1.0,
                        "lon": 2.0,
                    }
                )
    pd.DataFrame(rows).to_csv(root / "rgb_metadata.csv", index=False)
    # WILDS' reader also maps country codes to regions from this file (not needed for the labels)
    pd.DataFrame({"alpha-3": ["USA"], "region": ["Americas"]}).to_csv(
        root / "country_code_mapping.csv", index=False
    )
    # train = split train before 2013: (2010: 3 + 2012: 1) x 3; test = split test from 2016: 2 x 3
    return {"train": 12, "test": 6, "classes": 62}


# --- CLIP_benchmark webdataset export ---


def make_wds(root: Path, n_train: int = 6, n_test: int = 3) -> dict:
    classes = ["cat", "dog", "bird"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    fmts = [("webp", "WEBP"), ("jpg", "JPEG"), ("png", "PNG")]
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(exist_ok=True)
        k = 0
        for shard in range(2):
            with tarfile.open(root / split / f"{shard}.tar", "w") as tar:
                for _ in range(n):
                    label = k % 3
                    ext, fmt = fmts[k % 3]
                    for name, payload in (
                        (f"s{k:06d}.{ext}", image_bytes(label, fmt)),
                        (f"s{k:06d}.cls", str(label).encode()),
                    ):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
                    k += 1
    return {"train": 2 * n_train, "test": 2 * n_test, "classes": 3}


PAPER_MAKERS = {
    "imagenet-1k": make_imagenet,
    "inat-2018": make_inat2018,
    "cifar-10": make_cifar10,
    "cifar-100": make_cifar100,
    "food-101": make_food101,
    "dtd": make_dtd,
    "pets": make_pets,
    "cars": make_stanford_cars,
    "iwildcam": make_iwildcam,
    "camelyon17": make_camelyon17,
    "pcam": make_pcam,
    "rxrx1": make_rxrx1,
    "eurosat": make_eurosat,
    "fmow": make_fmow,
    "domainnet-infograph": make_domainnet,
}
