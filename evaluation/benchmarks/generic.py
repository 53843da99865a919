"""Generic layouts: image folders (ImageNet, the mini web's sets, ``imagefolder:<path>``) and
CLIP_benchmark's webdataset export (``wds:<path>``)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from evaluation.benchmarks.items import FileImages, TarMemberImages
from shared.errors import InputError

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
    paths, labels = [], []
    for name in class_dirs(folder):
        if name not in index:
            raise InputError(f"{folder / name}: class folder not present in the train split")
        with os.scandir(folder / name) as entries:
            files = sorted(
                e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
        paths += [folder / name / f for f in files]
        labels += [index[name]] * len(files)
    return FileImages(paths, labels, classes)


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


def imagenet(root: Path, split: str) -> FileImages:
    """ILSVRC-2012 as an image folder: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the val images sorted
    into class folders, e.g. with the usual valprep.sh). Our test = the official val (50,000)."""
    root = Path(root)
    classes = class_dirs(root / "train")
    return scan_image_folder(root / ("train" if split == "train" else "val"), classes)


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
        samples: dict[str, dict] = {}
        order: list[str] = []
        try:
            with tarfile.open(shard, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    # webdataset keys: everything up to the first dot of the basename is the sample key
                    directory, base = os.path.split(info.name)
                    key, _, ext = base.partition(".")
                    key = f"{directory}/{key}"
                    if key not in samples:
                        samples[key] = {}
                        order.append(key)
                    if ext.lower() == "cls":
                        samples[key]["cls"] = tar.extractfile(info).read().decode().strip()
                    elif ext.lower() in _WDS_IMAGE_KEYS and "image" not in samples[key]:
                        samples[key]["image"] = (str(shard), info.offset_data, info.size)
        except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read shard {shard}: {exc}") from None
        for key in order:
            sample = samples[key]
            if "image" not in sample or "cls" not in sample:
                continue  # a sample without image or label cannot be evaluated
            try:
                label = int(sample["cls"])
            except ValueError:
                raise InputError(f"{shard}: sample {key} has a non-integer cls {sample['cls']!r}") from None
            if not 0 <= label < len(classes):
                raise InputError(
                    f"{shard}: sample {key} has cls {label}, classnames.txt lists {len(classes)}"
                )
            members.append(sample["image"])
            labels.append(label)
    return TarMemberImages(members, labels, classes)
