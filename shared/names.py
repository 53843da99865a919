"""One wording for a value that names something unknown: the value and the closest known names (difflib)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest_names(value: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to `n` known names closest to `value` (difflib's ratio, at least 0.5), best first."""
    return difflib.get_close_matches(str(value), list(known), n=n, cutoff=0.5)


def unknown_name(what: str, value: object, known: Iterable[str], close: list[str] | None = None) -> str:
    """"unknown <what> 'x'; closest: a, b" (or "known: ..." with every name when none is close); `close`
    gives the closest names when the caller found them another way."""
    known = list(known)
    close = close or closest_names(str(value), known)
    hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(known) or '(none)'}"
    return f"unknown {what} {value!r}; {hint}"
