"""Procedurally drawn scenes with known attributes: the pixels behind every mini web image.

A scene is a few identical objects (shape, colour, size) on a textured background. Every attribute is
recorded in a `Scene`, so captions, benchmark labels and the ground truth all derive from the same facts.
Drawing is plain PIL + numpy; one `numpy.random.Generator` per image keeps the output deterministic.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
# Saturated, well separated hues so a small network (and a caption) can tell them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 170, 60),
    "blue": (35, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
COUNTS = (1, 2, 3, 4)
TEXTURES = ("plain", "stripes", "dots", "checker", "noise")
SIZES = ("small", "large")

# Backgrounds stay low-saturation (greys, beiges) so they never read as one of the object colours.
_BACKGROUNDS = ((235, 235, 230), (200, 200, 205), (225, 215, 195), (170, 175, 170), (245, 240, 225))
_SUPERSAMPLE = 2  # draw at 2x and downsample: antialiased edges without a slow renderer


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    count: int
    texture: str
    size: str
    layout_seed: int  # where the objects go, which background tone; not described by captions

    def as_dict(self) -> dict:
        return asdict(self)


def sample_scene(rng: np.random.Generator, **fixed) -> Scene:
    """A random scene; keyword arguments pin attributes (the benchmark sets pin their label)."""
    values = {
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "color": list(COLORS)[rng.integers(len(COLORS))],
        "count": int(COUNTS[rng.integers(len(COUNTS))]),
        "texture": TEXTURES[rng.integers(len(TEXTURES))],
        "size": SIZES[rng.integers(len(SIZES))],
        "layout_seed": int(rng.integers(2**31)),
    }
    values.update(fixed)
    return Scene(**values)


@lru_cache(maxsize=8)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:side, 0:side]
    return yy, xx


def _background(texture: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """[side, side, 3] uint8 background of the given texture."""
    base = np.array(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], dtype=np.int16)
    # the pattern tone: a darker shade of the base, never a saturated colour
    ink = np.clip(base - rng.integers(45, 80), 0, 255)
    img = np.empty((side, side, 3), dtype=np.int16)
    img[:] = base
    yy, xx = _grid(side)
    period = int(rng.integers(side // 12, side // 6) + 2)
    if texture == "stripes":
        along = xx if rng.integers(2) else yy
        mask = (along // (period // 2 or 1)) % 2 == 0
        img[mask] = ink
    elif texture == "checker":
        mask = ((xx // period) + (yy // period)) % 2 == 0
        img[mask] = ink
    elif texture == "dots":
        radius = max(1.5, period * 0.22)
        cx = (xx % period) - period / 2
        cy = (yy % period) - period / 2
        img[(cx * cx + cy * cy) <= radius * radius] = ink
    elif texture == "noise":
        # blocky grey noise, so it survives the downsample and JPEG
        block = max(2, side // 48)
        coarse = rng.integers(-45, 46, size=(side // block + 1, side // block + 1, 1))
        img = img + np.repeat(np.repeat(coarse, block, 0), block, 1)[:side, :side]
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape centred at (cx, cy) with circumradius r."""
    if shape == "square":
        turns = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        pts = [(math.cos(a), math.sin(a)) for a in turns]
    elif shape == "diamond":
        pts = [(0.7 * math.cos(k * math.pi / 2), math.sin(k * math.pi / 2)) for k in range(4)]
    elif shape == "triangle":
        turns = [angle - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        pts = [(math.cos(a), math.sin(a)) for a in turns]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.42
            a = angle - math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
               (-1, -w), (-w, -w)]
    else:
        raise ValueError(f"not a polygon shape: {shape}")
    return [(cx + r * x, cy + r * y) for x, y in pts]


def draw_scene(scene: Scene, side: int) -> Image.Image:
    """The scene as an RGB image of side x side pixels; same scene -> same pixels."""
    rng = np.random.default_rng(scene.layout_seed)
    big = side * _SUPERSAMPLE
    # the texture at the final resolution (cheap), blown up; only the objects need the antialiasing
    canvas = Image.fromarray(_background(scene.texture, side, rng)).resize((big, big), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    # One object per cell of a 2x2 grid keeps counts countable (objects never overlap).
    cells = rng.permutation(4)[: scene.count]
    cell = big / 2
    frac = 0.36 if scene.size == "large" else 0.2
    if scene.count == 1:  # a lone object may sit anywhere near the centre and be bigger
        cells, cell, frac = [0], big, frac * 1.15
    color = COLORS[scene.color]
    outline = tuple(int(c * 0.55) for c in color)
    for c in cells:
        r = cell * frac * float(rng.uniform(0.9, 1.1))
        slack = cell / 2 - r * 1.05
        cx = (c % 2) * cell + cell / 2 + float(rng.uniform(-slack, slack)) * 0.6
        cy = (c // 2) * cell + cell / 2 + float(rng.uniform(-slack, slack)) * 0.6
        angle = float(rng.uniform(-0.3, 0.3))
        if scene.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color, outline=outline, width=_SUPERSAMPLE)
        else:
            draw.polygon(_polygon(scene.shape, cx, cy, r, angle), fill=color, outline=outline,
                         width=_SUPERSAMPLE)
    return canvas.resize((side, side), Image.BILINEAR, reducing_gap=None)


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Deterministic encoding (no EXIF, no timestamps)."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, optimize=False)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def near_duplicate(img: Image.Image, variant: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """A near copy of an image: resized, re-encoded at a low quality, or slightly cropped.
    Returns (jpeg, how)."""
    side = img.width
    if variant == "resized":
        scale = float(rng.choice([0.75, 1.25, 1.5]))
        out = img.resize((round(side * scale), round(side * scale)), Image.BICUBIC)
        return encode(out, quality=88), f"resized x{scale}"
    if variant == "reencoded":
        quality = int(rng.integers(35, 60))
        return encode(img, quality=quality), f"re-encoded q{quality}"
    # cropped: a few pixels off each border, then back to the original side
    m = max(1, round(side * float(rng.uniform(0.04, 0.08))))
    out = img.crop((m, m, side - m, side - m)).resize((side, side), Image.BICUBIC)
    return encode(out, quality=90), f"cropped {m}px"


NEAR_DUP_VARIANTS = ("resized", "reencoded", "cropped")
