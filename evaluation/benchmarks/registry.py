"""The benchmark registry: the paper's 15 sets, the demo sets, and how to find and load each.

    specs = resolve_benchmarks(cfg.evaluation.benchmarks)        # "all", "paper", "demo", names, generic
    for spec in specs:
        root = benchmark_root(spec, cfg.evaluation.data_root, cfg.web_dir)
        if (reason := missing_reason(spec, root)):                # reported, never fatal
            log.warning(reason); continue
        train = load_split(spec, root, "train", val_fraction, seed, max_items)
        val = load_split(spec, root, "val", val_fraction, seed)   # carved from train, disjoint from it
        test = load_split(spec, root, "test")

Splits: "test" is always an official split (named in spec.test_split); "val" is carved out of the
official train split (seeded, stratified by label), except where a layout fixes its own val (EuroSAT's
seeded 60/20/20 split); "train" is the rest. Nothing is ever taken from test.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from evaluation.benchmarks import demo_sets, generic
from evaluation.benchmarks.items import SplitView
from evaluation.benchmarks.paper_sets import CARVED as _CARVED
from evaluation.benchmarks.paper_sets import PAPER_SPECS
from evaluation.benchmarks.spec import BenchmarkSpec
from evaluation.benchmarks.splits import cap, carve_val
from shared.config.benchmark_names import (
    DEMO_NAMES,
    GENERIC_PREFIXES,
    MINIWEB_TASKS,
    PAPER_NAMES,
    check_benchmark_name,
)
from shared.errors import ConfigError, InputError

_DEMO = [
    BenchmarkSpec(
        name=task, title=f"mini web: {task.split('-', 1)[1]}", num_classes=None,
        layout="<web_dir>/bench/<task>/{train,test}/<class>/*.png", train_size=None, test_size=None,
        how_to_get="openaim generate-web (the mini web writes <workdir>/web/bench/<task>)", default_subdir="",
        test_split="test/ folder", val_split=_CARVED, kind="demo", required=("train", "test"),
        loader=demo_sets.miniweb,
    )
    for task in MINIWEB_TASKS
] + [
    BenchmarkSpec(
        name="digits", title="scikit-learn digits (8x8, upscaled)", num_classes=10,
        layout="sklearn.datasets.load_digits (bundled, no files)", train_size=1258, test_size=539,
        how_to_get="bundled with scikit-learn", default_subdir="",
        test_split="30% of the 1,797 images, fixed seeded stratified split", val_split=_CARVED, kind="demo",
        loader=demo_sets.digits,
    ),
]

BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in PAPER_SPECS + _DEMO}
PAPER_BENCHMARKS: list[str] = [spec.name for spec in PAPER_SPECS]
DEMO_BENCHMARKS: list[str] = [spec.name for spec in _DEMO]
# the config checks names against shared.config.benchmark_names (no loaders imported): the same names
assert (tuple(PAPER_BENCHMARKS), tuple(DEMO_BENCHMARKS)) == (PAPER_NAMES, DEMO_NAMES)

_GENERIC_PREFIXES = GENERIC_PREFIXES


def generic_spec(text: str) -> BenchmarkSpec:
    """The spec of ``imagefolder:<path>`` or ``wds:<path>``; its name is file-system safe."""
    prefix, _, path = text.partition(":")
    if prefix not in _GENERIC_PREFIXES or not path:
        raise ConfigError(f"unknown benchmark {text!r}; generic ones are imagefolder:<path> or wds:<path>")
    resolved = str(Path(path).expanduser().resolve())
    # the name is used in cache paths: keep it short, readable, and distinct for distinct folders
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(resolved).name) or "root"
    name = f"{_GENERIC_PREFIXES[prefix]}-{stem}-{hashlib.sha1(resolved.encode()).hexdigest()[:6]}"
    common = {"num_classes": None, "train_size": None, "test_size": None, "default_subdir": resolved,
              "val_split": _CARVED, "kind": "generic"}
    if prefix == "imagefolder":
        return BenchmarkSpec(
            name=name, title=f"image folder {path}",
            layout="<path>/{train,test}/<class>/* (or val/ for test/)",
            how_to_get="any folder in this layout", test_split="test/ (or val/)", required=("train",),
            loader=generic.image_folder, **common,
        )
    return BenchmarkSpec(
        name=name, title=f"webdataset {path}", layout="<path>/classnames.txt + <path>/{train,test}/*.tar",
        how_to_get="clip_benchmark --dataset <name> --dataset_root <path> (CLIP_benchmark's wds export)",
        test_split="test/*.tar", required=("classnames.txt", "train", "test"),
        loader=generic.webdataset, **common,
    )


def resolve_benchmarks(names: list[str]) -> list[BenchmarkSpec]:
    """ "all" (paper 15 + demo sets), "paper", "demo", registry names, imagefolder:<path>, wds:<path>;
    in the order given, each once."""
    out: dict[str, BenchmarkSpec] = {}
    for name in names:
        if name == "all":
            picked = [BENCHMARKS[n] for n in PAPER_BENCHMARKS + DEMO_BENCHMARKS]
        elif name == "paper":
            picked = [BENCHMARKS[n] for n in PAPER_BENCHMARKS]
        elif name == "demo":
            picked = [BENCHMARKS[n] for n in DEMO_BENCHMARKS]
        elif name in BENCHMARKS:
            picked = [BENCHMARKS[name]]
        elif name.split(":", 1)[0] in _GENERIC_PREFIXES and ":" in name:
            picked = [generic_spec(name)]
        else:
            try:
                check_benchmark_name(name)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            raise AssertionError(f"benchmark {name!r} is named but has no spec")
        for spec in picked:
            out.setdefault(spec.name, spec)
    return list(out.values())


def benchmark_root(spec: BenchmarkSpec, data_root: str | Path, web_dir: str | Path) -> Path:
    """Where ``spec``'s files live: under ``data_root`` (evaluation.data_root), the mini web's under
    ``web_dir``, a generic set where its name says (digits needs none: its root is ignored)."""
    if spec.kind == "demo":
        return Path(web_dir) / "bench" / spec.name if spec.name in MINIWEB_TASKS else Path(".")
    if spec.kind == "generic":
        return Path(spec.default_subdir)
    return Path(data_root) / spec.default_subdir


def how_to_get(spec: BenchmarkSpec, data_root: str | Path) -> str:
    """spec.how_to_get with the configured data root in place of its ``<data_root>`` placeholder."""
    return spec.how_to_get.replace("<data_root>", str(data_root))


def missing_reason(spec: BenchmarkSpec, root: str | Path) -> str | None:
    """None when the files are there; else one line: the path looked at and how to get the data."""
    root = Path(root)
    if spec.name == "digits":
        try:
            import sklearn.datasets  # noqa: F401  (a probe: is the bundled set's library installed?)
        except ImportError:
            return "digits: scikit-learn is not installed (pip install scikit-learn)"
        return None
    layouts = spec.required if spec.required and isinstance(spec.required[0], tuple) else (spec.required,)
    absent = [next((root / rel for rel in layout if not (root / rel).exists()), None) for layout in layouts]
    if all(path is not None for path in absent):
        how = how_to_get(spec, root.parent)
        others = ", ".join(map(str, absent[1:]))
        other = f" (other layout: {others} is missing too)" if others else ""
        return f"{spec.name}: not found: {absent[0]} is missing{other}; get it: {how}"
    return None


SPLITS = ("train", "val", "test")


def load_split(
    spec: BenchmarkSpec,
    root: str | Path,
    split: str,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_items: int | None = None,
) -> SplitView:
    """A torch Dataset of (PIL RGB image, int label), or None for an unreadable image (counted in
    ``.skipped``; batch with ``items.collate_skip_none``). Also ``.classes`` and ``.labels``.

    ``max_items`` caps the split with a stratified seeded sample (the same items on every call).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if max_items is not None and max_items < 1:
        raise ConfigError(f"max_items must be at least 1, got {max_items}")
    root = Path(root)
    reason = missing_reason(spec, root)
    if reason:
        raise InputError(reason)
    if not spec.loader:
        raise ConfigError(f"{spec.name}: no loader")
    if split == "test" or spec.official_val:
        pool = spec.pools(root, split)
        indices = np.arange(len(pool))
    else:
        pool = spec.pools(root, "train")
        train, val = carve_val(pool.labels, val_fraction, seed)
        indices = train if split == "train" else val
    indices = cap(indices, pool.labels[indices], max_items, seed + 1)
    return SplitView(pool, indices, split)
