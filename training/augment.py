"""The AIM recipe's augmentation, with every random draw taken from an explicit numpy Generator.

RandomResizedCrop(img_size, scale 0.4-1, ratio 3/4-4/3, bicubic), horizontal flip p 0.5,
ColorJitter(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8 (ops in random order),
ImageNet mean/std. torchvision's transform classes draw from torch's global RNG; drawing the
parameters ourselves makes each sample's augmentation a function of its own seed, which is what makes
resumed runs bit-identical to uninterrupted ones.

Split between the data workers and the device: the workers decode, crop, resize and flip (PIL) and
draw the colour-jitter parameters; batches cross the worker boundary as uint8 images plus a [B, 9]
parameter table, and `to_model_input` normalises on the device. On GPU runs it also applies the
colour jitter there (batched, per-image factors and order, torchvision's tensor formulas): PIL's
jitter was ~40% of a worker's per-image CPU time. On CPU runs the workers apply it with PIL.
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


# jitter parameter table, one row per image: apply flag, brightness, contrast, saturation, hue factors,
# then the order in which the four ops run (a permutation of 0..3)
JITTER_PARAMS = 9


def crop_flip(img: Image.Image, size: int, rng: np.random.Generator,
              scale: tuple[float, float] = (0.4, 1.0)) -> Image.Image:
    """Random resized crop (bicubic) to size x size and horizontal flip with p 0.5."""
    img = img.convert("RGB")
    top, left, h, w = crop_box(img.width, img.height, scale, rng)
    img = TF.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BICUBIC, antialias=True)
    if rng.random() < 0.5:
        img = TF.hflip(img)
    return img


def draw_jitter(rng: np.random.Generator, jitter_p: float) -> torch.Tensor:
    """The colour-jitter parameters of one image, float32 [JITTER_PARAMS] (see JITTER_PARAMS)."""
    row = np.zeros(JITTER_PARAMS, dtype=np.float32)
    row[5:] = np.arange(4)
    if rng.random() < jitter_p:
        row[0] = 1.0
        row[1:5] = (rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2),
                    rng.uniform(-0.1, 0.1))
        row[5:] = rng.permutation(4)
    return torch.from_numpy(row)


def pil_jitter(img: Image.Image, params: torch.Tensor) -> Image.Image:
    """Apply one image's jitter parameters with torchvision's PIL ops (in a data worker)."""
    if params[0] <= 0:
        return img
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for k in params[5:].long().tolist():
        img = ops[k](img, float(params[1 + k]))
    return img


def augment_uint8(img: Image.Image, size: int, rng: np.random.Generator,
                  scale: tuple[float, float] = (0.4, 1.0), jitter_p: float = 0.8,
                  jitter_on_device: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The workers' part: (uint8 image [3, size, size], jitter parameters [JITTER_PARAMS]).

    With `jitter_on_device` the jitter is left to `to_model_input` (GPU training: it takes ~40% of a
    worker's CPU time per image); otherwise it is applied here with PIL and the returned parameters
    have their apply flag cleared (CPU training: the workers run beside the trainer, and the batched
    tensor jitter costs more there than PIL's)."""
    image = crop_flip(img, size, rng, scale)
    params = draw_jitter(rng, jitter_p)
    if not jitter_on_device:
        image = pil_jitter(image, params)
        params[0] = 0.0
    return TF.pil_to_tensor(image), params


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W], ITU-R 601-2 luma (torchvision's weights)."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of [B, 3, H, W] in [0, 1] by `shift` [B, 1, 1, 1] turns (via HSV)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    chroma = maxc - minc
    flat = chroma == 0
    safe = torch.where(flat, torch.ones_like(chroma), chroma)
    sat = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + shift[:, 0], 1.0)
    # back to RGB: sector i of the colour wheel, fraction f inside it
    sector = torch.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    sector = torch.remainder(sector, 6.0)
    v = maxc
    p = (v * (1.0 - sat)).clamp(0.0, 1.0)
    q = (v * (1.0 - sat * frac)).clamp(0.0, 1.0)
    t = (v * (1.0 - sat * (1.0 - frac))).clamp(0.0, 1.0)
    table = (  # (r, g, b) per sector
        (v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    out = torch.zeros_like(x)
    for i, rgb in enumerate(table):
        out = torch.where((sector == i).unsqueeze(1), torch.stack(rgb, 1), out)
    return out


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * x).clamp_(0.0, 1.0)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x), f)


JITTER_OPS = (_brightness, _contrast, _saturation, _shift_hue)  # the order of the factors in the table


def color_jitter(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Batched ColorJitter on [B, 3, H, W] floats in [0, 1] (any device) with per-image factors and op
    order from `params` [B, JITTER_PARAMS], a host tensor; images whose apply flag is 0 pass unchanged.

    The grouping is computed on the host from `params` and sent as one (pinned) index tensor: every op
    runs once per image that needs it, with no device-to-host read."""
    params = params.cpu()
    apply = params[:, 0] > 0
    groups, rows, factors = [], [], []
    for position in range(4):
        for k in range(len(JITTER_OPS)):
            sel = torch.nonzero(apply & (params[:, 5 + position] == k)).flatten()
            if len(sel):
                groups.append((k, sum(len(r) for r in rows), len(sel)))
                rows.append(sel)
                factors.append(params[sel, 1 + k])
    if not groups:
        return x
    table = torch.stack([torch.cat(rows).float(), torch.cat(factors)])  # [2, M]
    if x.device.type == "cuda":
        table = table.pin_memory()
    table = table.to(x.device, non_blocking=True)
    index, factor = table[0].long(), table[1].to(x.dtype)
    out = x.clone()
    for k, start, count in groups:
        idx = index[start:start + count]
        f = factor[start:start + count, None, None, None]  # [n, 1, 1, 1]
        out.index_copy_(0, idx, JITTER_OPS[k](out.index_select(0, idx), f))
    return out


_MEAN_STD: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as float32 [3, 1, 1] tensors on ``device``, made once per device.
    (torchvision's normalize copies them from pageable host memory and checks ``(std == 0).any()`` on
    every call: a device-to-host read per batch.)"""
    if device not in _MEAN_STD:
        _MEAN_STD[device] = tuple(torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1)
                                  for v in (IMAGENET_MEAN, IMAGENET_STD))
    return _MEAN_STD[device]


def to_model_input(images: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, 3, S, S] (+ jitter parameters [B, JITTER_PARAMS], on the host) -> the model's float32
    input: colour jitter, then ImageNet mean/std, on the images' device, without reading the device
    (torchvision's arithmetic: the same floats as its normalize)."""
    x = images.float().div_(255.0)
    if jitter is not None:
        x = color_jitter(x, jitter)
    mean, std = _mean_std(x.device)
    return x.sub_(mean).div_(std)


def augment(img: Image.Image, size: int, rng: np.random.Generator, scale: tuple[float, float] = (0.4, 1.0),
            jitter_p: float = 0.8) -> torch.Tensor:
    """PIL image -> normalised float tensor [3, size, size] (the whole recipe on the host)."""
    image, jitter = augment_uint8(img, size, rng, scale, jitter_p)
    return to_model_input(image[None], jitter[None])[0]
