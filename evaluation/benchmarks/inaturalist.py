"""iNaturalist 2018: COCO-style train2018.json / val2018.json next to the extracted train_val2018/ images.

torchvision's INaturalist reads the 2017-2019 releases from category folders only (every image of the
version, no train/val lists), so we read the official json lists ourselves. Our test = val2018.json
(24,426 images), train = train2018.json (437,513). The lists name categories by obfuscated ids;
categories.json, when present, gives the species names.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.benchmarks.items import FileImages
from shared.errors import InputError


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def _categories(root: Path, listing: dict) -> tuple[list[int], list[str]]:
    """(category ids in label order, their names). The 2018 listings name each category by its obfuscated
    id; categories.json (released after the competition) has the species names, so it wins when present."""
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in listing.get("categories") or []}
    if not by_id:
        by_id = {int(a["category_id"]): str(a["category_id"]) for a in listing["annotations"]}
    if (root / "categories.json").exists():
        named = _read_json(root / "categories.json")
        try:
            names = {int(c["id"]): str(c["name"]) for c in named}
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{root / 'categories.json'}: expected a list of {{id, name}}: {exc}") from None
        by_id = {cid: names.get(cid, name) for cid, name in by_id.items()}
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def inat2018(root: Path, split: str) -> FileImages:
    root = Path(root)
    # category ids come from the train listing so train and test agree on the label of every class
    train = _read_json(root / "train2018.json")
    listing = train if split == "train" else _read_json(root / "val2018.json")
    ids, names = _categories(root, train)
    label_of_id = {cid: i for i, cid in enumerate(ids)}
    try:
        file_of_image = {int(im["id"]): im["file_name"] for im in listing["images"]}
        paths, labels = [], []
        for ann in listing["annotations"]:
            paths.append(root / file_of_image[int(ann["image_id"])])
            labels.append(label_of_id[int(ann["category_id"])])
    except KeyError as exc:
        raise InputError(f"{root}: malformed iNaturalist listing ({split}): missing {exc}") from None
    return FileImages(paths, labels, names)
