"""DomainNet (Infograph domain) from the official lists: infograph_train.txt / infograph_test.txt,
lines ``infograph/<class>/<file>.jpg <label>``, paths relative to the DomainNet folder."""

from __future__ import annotations

from pathlib import Path

from evaluation.benchmarks.items import FileImages
from shared.errors import InputError


def read_list(path: Path) -> list[tuple[str, int]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rel, _, label = line.strip().rpartition(" ")
        try:
            rows.append((rel, int(label)))
        except ValueError:
            raise InputError(f"{path}:{number}: expected '<path> <label>', got {line.strip()!r}") from None
    return rows


def domainnet(root: Path, split: str, domain: str = "infograph") -> FileImages:
    root = Path(root)
    rows = read_list(root / f"{domain}_{split}.txt")
    # class names: the folder of each label's files, gathered from both lists so every label is named
    names: dict[int, str] = {}
    for s in ("train", "test"):
        listing = (
            rows
            if s == split
            else (read_list(root / f"{domain}_{s}.txt") if (root / f"{domain}_{s}.txt").exists() else [])
        )
        for rel, label in listing:
            names.setdefault(label, rel.split("/")[-2] if rel.count("/") >= 2 else str(label))
    n = max(names) + 1 if names else 0
    classes = [names.get(i, str(i)) for i in range(n)]
    return FileImages([root / rel for rel, _ in rows], [label for _, label in rows], classes)
