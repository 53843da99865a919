"""The AIM recipe's augmentation, with every random draw taken from an explicit numpy Generator.

RandomResizedCrop(img_size, scale 0.4-1, ratio 3/4-4/3, bicubic), horizontal flip p 0.5,
ColorJitter(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8 (ops in random order),
ImageNet mean/std. torchvision's transform classes draw from torch's global RNG; drawing the
parameters ourselves makes each sample's augmentation a function of its own seed, which is what makes
resumed runs bit-identical to uninterrupted ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_box(width: int, height: int, scale: tuple[float, float], rng: np.random.Generator,
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering `scale` of the area with aspect ratio in `ratio`."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the largest centred crop whose ratio is within range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment_uint8(img: Image.Image, size: int, rng: np.random.Generator,
                  scale: tuple[float, float] = (0.4, 1.0), jitter_p: float = 0.8) -> torch.Tensor:
    """PIL image -> augmented uint8 tensor [3, size, size] (crop, flip, colour jitter; not normalised:
    batches cross the worker boundary as uint8 and `normalize` runs on the device)."""
    img = img.convert("RGB")
    top, left, h, w = crop_box(img.width, img.height, scale, rng)
    img = TF.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BICUBIC, antialias=True)
    if rng.random() < 0.5:
        img = TF.hflip(img)
    if rng.random() < jitter_p:
        factors = (rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2),
                   rng.uniform(-0.1, 0.1))
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for i in rng.permutation(4):
            img = ops[i](img, float(factors[i]))
    return TF.pil_to_tensor(img)  # [3, size, size] uint8


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32 with ImageNet mean/std, on the images' device."""
    return TF.normalize(images.float().div_(255.0), IMAGENET_MEAN, IMAGENET_STD)


def augment(img: Image.Image, size: int, rng: np.random.Generator, scale: tuple[float, float] = (0.4, 1.0),
            jitter_p: float = 0.8) -> torch.Tensor:
    """PIL image -> normalised float tensor [3, size, size]."""
    return normalize(augment_uint8(img, size, rng, scale, jitter_p))
