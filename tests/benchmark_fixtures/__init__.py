"""Tiny copies of each benchmark's real offline layout, written by the tests.

Every image is a solid colour whose red channel encodes the label the loader must give it
(``images.red_for(label)``), so a test can check that images and labels stay paired through a loader.
Each ``make_*`` writes under the benchmark's own folder and returns the expected sizes:
{"train": items in the official train pool, "test": items in the test split, "classes": n}.

Modules by layout family: images (the colour-coded images), folders, indexed, wilds, wds_export;
PAPER_MAKERS here maps each paper benchmark to its maker.
"""

from __future__ import annotations

from tests.benchmark_fixtures.folders import make_eurosat, make_imagenet
from tests.benchmark_fixtures.indexed import (
    make_cifar10,
    make_cifar100,
    make_domainnet,
    make_dtd,
    make_food101,
    make_inat2018,
    make_pcam,
    make_pets,
    make_stanford_cars,
)
from tests.benchmark_fixtures.wilds import make_camelyon17, make_fmow, make_iwildcam, make_rxrx1

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
