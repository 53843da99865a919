"""The benchmark names a config may use (shared.config checks them at load, before torch or torchvision is
imported; here with the configs, which import no stage). The registry's specs (evaluation.benchmarks.registry)
carry exactly these names (registry.py checks it at import).
"""

from __future__ import annotations

from shared.names import closest_names, unknown_name

PAPER_NAMES = ("imagenet-1k", "inat-2018", "cifar-10", "cifar-100", "food-101", "dtd", "pets", "cars",
               "iwildcam", "camelyon17", "pcam", "rxrx1", "eurosat", "fmow", "domainnet-infograph")
MINIWEB_TASKS = ("miniweb-shape", "miniweb-color", "miniweb-count", "miniweb-texture")
DEMO_NAMES = (*MINIWEB_TASKS, "digits")
GROUPS = ("all", "paper", "demo")
# config prefix -> the generic spec's name prefix
GENERIC_PREFIXES = {"imagefolder": "imagefolder", "wds": "webdataset"}
GENERIC_FORMS = tuple(f"{prefix}:<path>" for prefix in GENERIC_PREFIXES)


def is_generic(text: str) -> bool:
    """``imagefolder:<path>`` or ``wds:<path>`` with a non-empty path."""
    prefix, sep, path = str(text).partition(":")
    return bool(sep) and prefix in GENERIC_PREFIXES and bool(path)


def check_benchmark_name(text: str, groups: bool = True) -> str:
    """`text` when it names a benchmark (a registry name, a group when `groups`, or a generic form);
    otherwise ValueError: the value and the closest known names."""
    known = (*GROUPS, *PAPER_NAMES, *DEMO_NAMES) if groups else (*PAPER_NAMES, *DEMO_NAMES)
    if text in known or is_generic(text):
        return text
    prefix, sep, _path = str(text).partition(":")
    if sep and (close := closest_names(prefix, GENERIC_PREFIXES)):  # a mistyped generic prefix
        raise ValueError(unknown_name("benchmark", text, GENERIC_FORMS, [f"{c}:<path>" for c in close]))
    raise ValueError(unknown_name("benchmark", text, [*known, *GENERIC_FORMS]))
