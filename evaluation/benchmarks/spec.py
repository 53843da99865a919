"""BenchmarkSpec: what a benchmark is, where it lives on disk, and which split is which."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from evaluation.benchmarks.items import LabelledImages


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str  # registry key, e.g. "cifar-10"
    title: str  # human name, e.g. "CIFAR-10"
    num_classes: int | None  # None for generic sets (known only once loaded)
    layout: str  # short text: the files the loader reads
    train_size: int | None  # paper / official figures (None when unknown)
    test_size: int | None
    how_to_get: str  # one line: URL or command that produces the layout
    default_subdir: str  # folder under cfg.evaluation.data_root ("" for sets without a root)
    test_split: str  # which official split is our "test"
    val_split: str  # how "val" is made (always from train, never from test)
    kind: Literal["paper", "demo", "generic"] = "paper"
    # Paths relative to the root that must exist for the data to count as present; a tuple of tuples
    # lists alternative layouts (present when every path of one of them exists).
    required: tuple[str, ...] | tuple[tuple[str, ...], ...] = ()
    # True when the layout has a fixed val split of its own (EuroSAT's seeded 60/20/20): the pool
    # loader then answers "val" itself instead of carving val_fraction out of train.
    official_val: bool = False
    notes: str = ""
    # The pool loader: reads one official split from the root, loader(root, "train" | "test" | "val"*)
    # (*only for official_val specs), and returns an items.LabelledImages.
    loader: Callable[[Path, str], LabelledImages] | None = None

    def pools(self, root: str | Path, split: str) -> LabelledImages:
        return self.loader(Path(root), split)
