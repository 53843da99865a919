"""The WILDS layouts (iWildCam, Camelyon17, RxRx1, fMoW), read with pandas from their metadata files.

We mirror the WILDS package's ``official`` split scheme (same columns, same image paths), without
depending on it. Folders are the WILDS ones: <data_root>/<dataset>_v<version>/.

Which split is our "test" (the choice is made here, for all four sets): WILDS' OOD *test* split, as
the recipe's benchmark table does (the AIM paper's figures as the project records them): its test sizes,
iWildCam 42,791, Camelyon17 85,054, RxRx1 34,432 and fMoW 22,108, are WILDS' OOD test splits.
WILDS' OOD val splits are never used; our probe settings are chosen on a val carved from train, so
nothing is tuned on test.
- iWildCam v2.0: metadata.csv (split, filename, y, ...); images in train/<filename> whatever the split.
  Our test = "test" (OOD: unseen camera traps).
- Camelyon17 v1.0: metadata.csv (patient, node, x_coord, y_coord, tumor, slide, center, split);
  patches/patient_<PPP>_node_<N>/patch_patient_<PPP>_node_<N>_x_<X>_y_<Y>.png. WILDS overrides the split
  by hospital: center 1 = OOD val, center 2 = test. Our train = split 0 of the other centers.
- RxRx1 v1.0: metadata.csv (site_id, well_id, cell_type, dataset, experiment, plate, well, site,
  well_type, sirna, sirna_id); images/<experiment>/Plate<plate>/<well>_s<site>.png. Train = dataset
  "train" at site 1 (site 2 is WILDS' ID test), test = dataset "test" (OOD experiments).
- fMoW v1.1: rgb_metadata.csv (split, category, timestamp, ...); images/rgb_img_<row>.png, <row> = the row
  of the csv (sequestered "seq" rows keep their numbers). Time split: train = split "train" before 2013,
  test = split "test" from 2016 on (OOD).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.benchmarks.items import FileImages
from shared.errors import InputError


def _read_csv(path: Path, columns: list[str], **kwargs):
    try:
        df = pd.read_csv(path, **kwargs)
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise InputError(f"cannot read {path}: {exc}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def iwildcam(root: Path, split: str) -> FileImages:
    root = Path(root)
    df = _read_csv(root / "metadata.csv", ["split", "filename", "y"])
    n_classes = int(df["y"].max()) + 1
    names = [str(i) for i in range(n_classes)]
    if (root / "categories.csv").exists():  # WILDS ships y -> category name here
        cats = _read_csv(root / "categories.csv", ["y", "name"])
        for y, name in zip(cats["y"], cats["name"], strict=True):
            if 0 <= int(y) < n_classes:
                names[int(y)] = str(name)
    rows = df[df["split"] == split]
    return FileImages([root / "train" / f for f in rows["filename"]], rows["y"].astype(int).tolist(), names)


CAMELYON_TEST_CENTER = 2
CAMELYON_VAL_CENTER = 1


def camelyon17(root: Path, split: str) -> FileImages:
    root = Path(root)
    df = _read_csv(
        root / "metadata.csv",
        ["patient", "node", "x_coord", "y_coord", "tumor", "center", "split"],
        index_col=0,
        dtype={"patient": "str"},
    )
    center = df["center"].astype(int)
    if split == "train":
        rows = df[(df["split"].astype(int) == 0) & ~center.isin([CAMELYON_TEST_CENTER, CAMELYON_VAL_CENTER])]
    else:
        rows = df[center == CAMELYON_TEST_CENTER]
    paths = []
    for patient, node, x, y in rows[["patient", "node", "x_coord", "y_coord"]].itertuples(
        index=False, name=None
    ):
        patient = f"{int(patient):03d}" if str(patient).isdigit() else str(patient)
        folder = f"patient_{patient}_node_{int(node)}"
        paths.append(root / "patches" / folder / f"patch_{folder}_x_{int(x)}_y_{int(y)}.png")
    return FileImages(paths, rows["tumor"].astype(int).tolist(), ["normal", "tumor"])


def rxrx1(root: Path, split: str) -> FileImages:
    root = Path(root)
    df = _read_csv(root / "metadata.csv", ["dataset", "experiment", "plate", "well", "site", "sirna_id"])
    n_classes = int(df["sirna_id"].max()) + 1
    names = [str(i) for i in range(n_classes)]
    if "sirna" in df.columns:
        for sid, name in zip(df["sirna_id"], df["sirna"], strict=True):
            names[int(sid)] = str(name)
    if split == "train":
        rows = df[(df["dataset"] == "train") & (df["site"].astype(int) == 1)]
    else:
        rows = df[df["dataset"] == "test"]
    paths = [
        root / "images" / str(e) / f"Plate{int(p)}" / f"{w}_s{int(s)}.png"
        for e, p, w, s in rows[["experiment", "plate", "well", "site"]].itertuples(index=False, name=None)
    ]
    return FileImages(paths, rows["sirna_id"].astype(int).tolist(), names)


# The 62 fMoW categories in WILDS' label order.
FMOW_CATEGORIES = [
    "airport",
    "airport_hangar",
    "airport_terminal",
    "amusement_park",
    "aquaculture",
    "archaeological_site",
    "barn",
    "border_checkpoint",
    "burial_site",
    "car_dealership",
    "construction_site",
    "crop_field",
    "dam",
    "debris_or_rubble",
    "educational_institution",
    "electric_substation",
    "factory_or_powerplant",
    "fire_station",
    "flooded_road",
    "fountain",
    "gas_station",
    "golf_course",
    "ground_transportation_station",
    "helipad",
    "hospital",
    "impoverished_settlement",
    "interchange",
    "lake_or_pond",
    "lighthouse",
    "military_facility",
    "multi-unit_residential",
    "nuclear_powerplant",
    "office_building",
    "oil_or_gas_facility",
    "park",
    "parking_lot_or_garage",
    "place_of_worship",
    "police_station",
    "port",
    "prison",
    "race_track",
    "railway_bridge",
    "recreational_facility",
    "road_bridge",
    "runway",
    "shipyard",
    "shopping_mall",
    "single-unit_residential",
    "smokestack",
    "solar_farm",
    "space_facility",
    "stadium",
    "storage_tank",
    "surface_mine",
    "swimming_pool",
    "toll_booth",
    "tower",
    "tunnel_opening",
    "waste_disposal",
    "water_treatment_facility",
    "wind_farm",
    "zoo",
]
FMOW_TRAIN_BEFORE_YEAR = 2013  # WILDS: the 3 years before the OOD test year are OOD val
FMOW_TEST_FROM_YEAR = 2016


def fmow(root: Path, split: str) -> FileImages:
    root = Path(root)
    df = _read_csv(root / "rgb_metadata.csv", ["split", "category", "timestamp"])
    try:
        # WILDS' csv mixes "...T10:00:17Z" and "...T10:00:56.643Z" (WILDS issue #146); one format string
        # would reject the other, so parse each value as ISO 8601 on its own terms
        year = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601").dt.year.to_numpy()
    except (ValueError, TypeError) as exc:
        raise InputError(f"{root / 'rgb_metadata.csv'}: unreadable timestamp: {exc}") from None
    if split == "train":
        mask = (df["split"] == "train").to_numpy() & (year < FMOW_TRAIN_BEFORE_YEAR)
    else:
        mask = (df["split"] == "test").to_numpy() & (year >= FMOW_TEST_FROM_YEAR)
    label_of = {c: i for i, c in enumerate(FMOW_CATEGORIES)}
    rows = np.flatnonzero(mask)
    try:
        labels = [label_of[c] for c in df["category"].to_numpy()[rows]]
    except KeyError as exc:
        raise InputError(f"{root / 'rgb_metadata.csv'}: unknown fMoW category {exc}") from None
    return FileImages([root / "images" / f"rgb_img_{i}.png" for i in rows], labels, FMOW_CATEGORIES)
