"""Generic layouts: image folders (ImageNet, the mini web's sets, ``imagefolder:<path>``) and
CLIP_benchmark's webdataset export (``wds:<path>``).

Image folders are scanned with torchvision's own scanner (``torchvision.datasets.folder.make_dataset``),
the one every image-folder layout here goes through."""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
from pathlib import Path

import scipy.io
from torchvision.datasets.folder import make_dataset

from evaluation.benchmarks.items import FileImages, TarMemberImages
from shared.errors import InputError
from shared.wds_reader import indexed_samples

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")


def class_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise InputError(f"cannot list {folder}: {exc}") from None


def scan_image_folder(folder: Path, classes: list[str]) -> FileImages:
    """<folder>/<class>/<image>: labels follow ``classes`` (the train split's), not the folder's own
    listing, so a test folder missing a class cannot shift every label after it."""
    folder = Path(folder)
    index = {c: i for i, c in enumerate(classes)}
    extra = [name for name in class_dirs(folder) if name not in index]
    if extra:
        raise InputError(f"{folder / extra[0]}: class folder not present in the train split")
    try:
        samples = make_dataset(str(folder), index, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    except OSError as exc:
        raise InputError(f"cannot list {folder}: {exc}") from None
    return FileImages([Path(path) for path, _ in samples], [label for _, label in samples], classes)


def _test_dir(root: Path) -> Path:
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise InputError(f"{root}: no test/ or val/ folder")


def image_folder(root: Path, split: str) -> FileImages:
    """<root>/train/<class>/* and <root>/test/<class>/* (or val/ when there is no test/)."""
    root = Path(root)
    classes = class_dirs(root / "train")
    if not classes:
        raise InputError(f"{root / 'train'}: no class folders")
    return scan_image_folder(root / "train" if split == "train" else _test_dir(root), classes)


# --- ImageNet-1k --------------------------------------------------------------------------------------
# train/<wnid>/*.JPEG as ILSVRC2012_img_train.tar's per-class tars extract. The val images either sorted
# into val/<wnid>/ (torchvision's ImageNet does that, as does the usual valprep.sh), or flat in val/ as
# ILSVRC2012_img_val.tar gives them, labelled by one of
#   - LOC_val_solution.csv (Kaggle's ImageNet release): ImageId,PredictionString where the string's first
#     token is the wnid ("n01751748 x1 y1 x2 y2 n01751748 ...");
#   - the devkit (ILSVRC2012_devkit_t12/, or its .tar.gz unextracted): data/meta.mat names each
#     ILSVRC2012_ID's wnid (leaf synsets: num_children == 0) and data/ILSVRC2012_validation_ground_truth.txt
#     holds the ILSVRC2012_ID of val image i on line i. torchvision pairs the lines with the sorted file
#     names; we pair line i with ILSVRC2012_val_<i>.JPEG, the same for the full 50,000 and still right for
#     a partial copy.

DEVKIT = "ILSVRC2012_devkit_t12"
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)\.", re.IGNORECASE)


def imagenet(root: Path, split: str) -> FileImages:
    """ILSVRC-2012: train/<wnid>/ class folders; val/ sorted into <wnid>/ folders or flat with its labels
    (LOC_val_solution.csv or the devkit). Our test = the official val (50,000)."""
    root = Path(root)
    classes = class_dirs(root / "train")
    if not classes:
        raise InputError(f"{root / 'train'}: no class folders")
    if split == "train":
        return scan_image_folder(root / "train", classes)
    val = root / "val"
    if class_dirs(val):
        return scan_image_folder(val, classes)
    files = sorted(
        e.name for e in os.scandir(val) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )
    wnid_of = _imagenet_val_labels(root, files)
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for name in files:
        wnid = wnid_of[name]
        if wnid not in index:
            raise InputError(f"{val / name}: its label {wnid} is not a class folder of {root / 'train'}")
        labels.append(index[wnid])
    return FileImages([val / name for name in files], labels, classes)


def _imagenet_val_labels(root: Path, files: list[str]) -> dict[str, str]:
    """{val file name: wnid} from LOC_val_solution.csv or the devkit, whichever is there."""
    kaggle = root / "LOC_val_solution.csv"
    if kaggle.is_file():
        return _labels_from_kaggle(kaggle, files)
    if (root / DEVKIT / "data").is_dir():
        data = root / DEVKIT / "data"
        try:
            meta, truth = (
                (data / "meta.mat").read_bytes(),
                (data / "ILSVRC2012_validation_ground_truth.txt").read_text(),
            )
        except OSError as exc:
            raise InputError(f"cannot read the ImageNet devkit in {data}: {exc}") from None
        return _labels_from_devkit(meta, truth, files, data)
    archive = root / f"{DEVKIT}.tar.gz"
    if archive.is_file():
        try:
            with tarfile.open(archive, "r:gz") as tar:
                meta = tar.extractfile(f"{DEVKIT}/data/meta.mat").read()
                truth = (
                    tar.extractfile(f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt").read().decode()
                )
        except (tarfile.TarError, OSError, KeyError, AttributeError) as exc:
            raise InputError(f"cannot read {archive}: {exc}") from None
        return _labels_from_devkit(meta, truth, files, archive)
    raise InputError(
        f"{root / 'val'} holds {len(files)} images in no class folders and there are no labels for "
        f"them: put Kaggle's LOC_val_solution.csv, {DEVKIT}/ or {DEVKIT}.tar.gz in {root}"
    )


def _labels_from_kaggle(path: Path, files: list[str]) -> dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = {r["ImageId"]: r["PredictionString"].split()[0] for r in csv.DictReader(f)}
    except (OSError, KeyError, IndexError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path} (ImageId,PredictionString rows): {exc}") from None
    unlabelled = [name for name in files if Path(name).stem not in rows]
    if unlabelled:
        raise InputError(f"{path} has no row for {unlabelled[0]} ({len(unlabelled)} val images unlabelled)")
    return {name: rows[Path(name).stem] for name in files}


def _labels_from_devkit(meta_mat: bytes, ground_truth: str, files: list[str], source: Path) -> dict[str, str]:
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
        wnid_of_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
        ids = [int(line) for line in ground_truth.split()]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read the ImageNet devkit in {source}: {exc}") from None
    out = {}
    for name in files:
        number = _VAL_NUMBER.search(name)
        if number is None or not 1 <= int(number.group(1)) <= len(ids):
            raise InputError(f"{name}: not an ILSVRC2012_val_<n> image listed in {source}'s ground truth")
        out[name] = wnid_of_id.get(ids[int(number.group(1)) - 1], "")
    return out


# --- CLIP_benchmark webdataset export ---
# <root>/classnames.txt (one name per line, line i = class i) and <root>/<split>/*.tar whose samples
# carry an image (webp, jpg, png...) and `cls` (the class index as text).

_WDS_IMAGE_KEYS = ("webp", "jpg", "jpeg", "png")


def read_classnames(root: Path) -> list[str]:
    path = Path(root) / "classnames.txt"
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def webdataset(root: Path, split: str) -> TarMemberImages:
    root = Path(root)
    classes = read_classnames(root)
    shards = sorted((root / split).glob("*.tar"))
    if not shards:
        raise InputError(f"{root / split}: no .tar shards")
    members, labels = [], []
    for shard in shards:
        found: list[tuple[str, tuple[str, int, int], str]] = []  # (key, image member, cls) per sample
        try:
            with tarfile.open(shard, "r:") as tar:
                for sample in indexed_samples(tar, str(shard)):
                    image = next((info for field, info in sample.items() if field in _WDS_IMAGE_KEYS), None)
                    if image is None or "cls" not in sample:
                        continue  # a sample without image or label cannot be evaluated
                    cls = tar.extractfile(sample["cls"]).read().decode().strip()
                    found.append((sample["__key__"], (str(shard), image.offset_data, image.size), cls))
        except (tarfile.TarError, OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"cannot read shard {shard}: {exc}") from None
        for key, image, cls in found:
            try:
                label = int(cls)
            except ValueError:
                raise InputError(f"{shard}: sample {key} has a non-integer cls {cls!r}") from None
            if not 0 <= label < len(classes):
                raise InputError(
                    f"{shard}: sample {key} has cls {label}, classnames.txt lists {len(classes)}"
                )
            members.append(image)
            labels.append(label)
    return TarMemberImages(members, labels, classes)
