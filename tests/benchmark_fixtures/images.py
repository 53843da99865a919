"""The fixtures' images: solid colours whose red channel encodes the label the loader must give them, so a
test can check that images and labels stay paired through a loader.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

SIZE = 8


def red_for(label: int) -> int:
    return 20 + 5 * (label % 40)


def label_from_red(red: int) -> int:
    return round((red - 20) / 5)


def color_for(label: int) -> tuple[int, int, int]:
    return red_for(label), 90, 160


def write_image(path: Path, label: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), color_for(label)).save(path, format=fmt)


def image_bytes(label: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), color_for(label)).save(buf, format=fmt)
    return buf.getvalue()


def corrupt(path: Path) -> None:
    """Keep the file but break it: a JPEG/PNG header followed by garbage."""
    path.write_bytes(path.read_bytes()[:20] + b"\x00garbage" * 4)
