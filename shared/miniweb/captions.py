"""Captions of scenes in varied natural templates, and the junk alt texts real pages are full of.

Every describing caption names the shape, colour and count (so a small CLIP can learn them); most also
name the background texture, some the object size. The wording varies so a filter cannot key on one template.
"""

from __future__ import annotations

import numpy as np

from shared.miniweb.scenes import Scene

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "diamond": "diamonds", "cross": "crosses"}
TEXTURE_PHRASES = {
    "plain": ("a plain background", "a plain backdrop", "a blank background"),
    "stripes": ("a striped background", "stripes", "a background of stripes"),
    "dots": ("a dotted background", "dots", "a polka dot background"),
    "checker": ("a checkered background", "a checkerboard", "a checked pattern"),
    "noise": ("a noisy background", "grainy noise", "a speckled background"),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}

# {n} number word, {a} number word or "a" for one, {obj} "red circle(s)", {bg} texture phrase, {sz} size word
TEMPLATES = (
    "{n} {obj} on {bg}",
    "a photo of {n} {obj} over {bg}",
    "{n} {sz} {obj} on {bg}",
    "picture showing {n} {obj} against {bg}",
    "an illustration of {n} {obj}, {bg} behind",
    "{n} {obj}",
    "a drawing of {n} {sz} {obj} on {bg}",
    "there are {n} {obj} on {bg} in this image",
    "close-up of {n} {obj} with {bg}",
    "{n} {obj} arranged on {bg}",
)

JUNK_ALTS = (
    "", "image", "photo", "click here", "IMG_2031.jpg", "DSC00412.JPG", "thumbnail", "logo", "banner",
    "untitled", "spacer", "img", "Image 3 of 12", "placeholder", "read more", "photo_0001", "pic",
    "home", "advertisement", "P1000234.JPG", "screenshot", "icon", "picture",
)


def object_phrase(scene: Scene) -> str:
    noun = scene.shape if scene.count == 1 else PLURALS[scene.shape]
    return f"{scene.color} {noun}"


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """A caption that describes the scene, in a template drawn from rng."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    number = NUMBER_WORDS[scene.count]
    if scene.count == 1 and rng.random() < 0.5:
        number = "a"  # "a red circle" reads as naturally as "one red circle"
    bg = TEXTURE_PHRASES[scene.texture]
    sz = SIZE_WORDS[scene.size]
    text = template.format(n=number, obj=object_phrase(scene), bg=bg[rng.integers(len(bg))],
                           sz=sz[rng.integers(len(sz))])
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    return text


def junk_alt(rng: np.random.Generator) -> str:
    return JUNK_ALTS[rng.integers(len(JUNK_ALTS))]
