"""Loaders for the benchmarks torchvision knows: read offline (download=False) from their real layouts.

Every loader takes the benchmark's own folder (``root``, e.g. <data_root>/food-101) and an official
split, and returns a LabelledImages. torchvision wants the folder *above* its own sub-folder, so we hand
it ``root.parent`` and check that ``root`` carries the name torchvision expects.

CIFAR is read from its pickled batches directly: torchvision's CIFAR classes refuse any file whose md5
differs from the release (even with download=False), which would also refuse a re-pickled copy.
PCAM is read from torchvision's h5 layout with one h5 handle per process (see H5Images).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import torchvision.datasets as tvd
from PIL import Image

from evaluation.benchmarks.items import ArrayImages, FileImages, LabelledImages, TorchvisionImages
from evaluation.benchmarks.splits import fixed_split
from shared.errors import InputError


def _torchvision(cls_name: str, root: Path, folder: str, **kwargs):
    root = Path(root)
    if root.name != folder:
        raise InputError(
            f"{cls_name} expects its folder to be named '{folder}' (torchvision layout), got {root}"
        )
    try:
        return getattr(tvd, cls_name)(str(root.parent), download=False, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read {cls_name} at {root}: {exc}") from None


# --- CIFAR-10 / CIFAR-100: python pickled batches -----------------------------------------------------


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise InputError(f"cannot read CIFAR batch {path}: {exc}") from None


def _cifar(root: Path, files: list[str], meta_file: str, names_key: str, labels_key: str) -> ArrayImages:
    chunks, labels = [], []
    for name in files:
        batch = _unpickle(Path(root) / name)
        # rows are 3072 bytes: the red plane, then green, then blue, each 32x32 row-major
        chunks.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(int(y) for y in batch[labels_key])
    classes = _unpickle(Path(root) / meta_file)[names_key]
    keys = [f"{'+'.join(files)}#{i}" for i in range(len(labels))]
    return ArrayImages(np.ascontiguousarray(np.concatenate(chunks)), labels, classes, keys)


def cifar10(root: Path, split: str) -> ArrayImages:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return _cifar(root, files, "batches.meta", "label_names", "labels")


def cifar100(root: Path, split: str) -> ArrayImages:
    return _cifar(root, [split], "meta", "fine_label_names", "fine_labels")


# --- torchvision classes ---


def food101(root: Path, split: str) -> TorchvisionImages:
    ds = _torchvision("Food101", root, "food-101", split=split)
    return TorchvisionImages(ds, ds._labels, ds.classes, ds._image_files)


DTD_LAYOUTS = ("dtd", ".")  # torchvision's doubled <root>/dtd/{images,labels}, or the official tar's


def dtd_folder(root: Path) -> Path:
    """The folder holding images/ and labels/: <root>/dtd as torchvision's DTD(download=True) leaves it,
    or <root> itself when dtd-r1.0.1.tar.gz was extracted into the data root (its top folder is dtd/)."""
    for sub in DTD_LAYOUTS:
        base = Path(root) / sub
        if (base / "labels").is_dir() and (base / "images").is_dir():
            return base
    raise InputError(f"DTD: no images/ and labels/ in {root} or {Path(root) / 'dtd'}")


def dtd(root: Path, split: str) -> FileImages:
    """Fold 1. Our train = the official train1 + val1 (3,760 images); test = test1 (1,880).

    Read as torchvision's DTD reads it: each line of labels/<split>1.txt is "<class>/<file>", the image is
    images/<class>/<file>, labels index the sorted class names (here of all three lists, so train and test
    agree even if a list lacks a class)."""
    base = dtd_folder(root)
    listed: dict[str, list[tuple[str, str]]] = {}
    for name in ("train1", "val1", "test1"):
        path = base / "labels" / f"{name}.txt"
        try:
            lines = path.read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        rows = [tuple(line.split("/", 1)) for line in lines]
        if any(len(row) != 2 for row in rows):
            raise InputError(f"{path}: expected '<class>/<file>' lines")
        listed[name] = rows
    classes = sorted({cls for rows in listed.values() for cls, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    rows = listed["train1"] + listed["val1"] if split == "train" else listed["test1"]
    return FileImages(
        [base / "images" / cls / file for cls, file in rows], [index[cls] for cls, _ in rows], classes
    )


def pets(root: Path, split: str) -> TorchvisionImages:
    ds = _torchvision(
        "OxfordIIITPet", root, "oxford-iiit-pet", split="trainval" if split == "train" else "test"
    )
    return TorchvisionImages(ds, ds._labels, ds.classes, ds._images)


def stanford_cars(root: Path, split: str) -> TorchvisionImages:
    ds = _torchvision("StanfordCars", root, "stanford_cars", split=split)
    return TorchvisionImages(ds, [y for _, y in ds._samples], ds.classes, [p for p, _ in ds._samples])


PCAM_CLASSES = ["no metastatic tissue", "metastatic tissue"]
PCAM_FILES = {  # torchvision's names (PCAM._FILES), as released
    split: (f"camelyonpatch_level_2_split_{split}_x.h5", f"camelyonpatch_level_2_split_{split}_y.h5")
    for split in ("train", "valid", "test")
}


class H5Images(LabelledImages):
    """PCAM's h5 images ("x": uint8 [N, 96, 96, 3]), read through one handle per process.

    torchvision's PCAM reopens both h5 files for every item (and keeps the h5py module on the instance,
    which cannot be pickled into DataLoader workers); this keeps its layout and reads it faster."""

    def __init__(self, path: Path, labels: np.ndarray, classes: list[str]):
        super().__init__(labels, classes)
        self.path = str(path)
        self._file = None

    def read_image(self, index: int):
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return Image.fromarray(self._file["x"][index])

    def item_keys(self) -> list[str]:
        return [f"{self.path}#{i}" for i in range(len(self))]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None  # every worker opens its own handle
        return state


def pcam(root: Path, split: str) -> H5Images:
    """PatchCamelyon h5 files; the official valid split is not used (val is carved from train)."""
    images, targets = (Path(root) / name for name in PCAM_FILES[split])
    try:
        with h5py.File(targets, "r") as f:
            labels = np.asarray(f["y"]).reshape(-1).astype(np.int64)  # stored as [N, 1, 1, 1]
        with h5py.File(images, "r") as f:
            n_images = f["x"].shape[0]
    except (OSError, KeyError) as exc:
        raise InputError(f"cannot read PCAM {split} h5 files in {root}: {exc}") from None
    if n_images != len(labels):
        raise InputError(f"PCAM {split}: {n_images} images but {len(labels)} labels in {root}")
    return H5Images(images, labels, PCAM_CLASSES)


EUROSAT_SPLIT = (0.6, 0.2, 0.2)  # VTAB's train / val / test shares; EuroSAT ships no split
EUROSAT_SPLIT_SEED = 0  # fixed on purpose: every run and every model sees the same split


def eurosat(root: Path, split: str):
    ds = _torchvision("EuroSAT", root, "eurosat")
    everything = TorchvisionImages(ds, ds.targets, ds.classes, [p for p, _ in ds.samples])
    train, val, test = fixed_split(everything.labels, EUROSAT_SPLIT, EUROSAT_SPLIT_SEED)
    indices = {"train": train, "val": val, "test": test}[split]
    return _Reindexed(everything, indices)


class _Reindexed(TorchvisionImages):
    """A fixed subset of a LabelledImages, itself a LabelledImages (so it can be split further)."""

    def __init__(self, base, indices):
        keys = base.item_keys()
        super().__init__(base.dataset, base.labels[indices], base.classes, [keys[i] for i in indices])
        self._base, self._indices = base, np.asarray(indices)

    def read_image(self, index: int):
        return self._base.read_image(int(self._indices[index]))
