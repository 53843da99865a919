"""The WILDS benchmarks in WILDS' own layout (metadata.csv beside the images): iWildCam, Camelyon17, RxRx1,
FMoW.
"""

from __future__ import annotations

from pathlib import Path

from tests.benchmark_fixtures.images import SIZE, write_image


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
