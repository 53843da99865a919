"""The device half of the augmentation (training.augment.to_model_input) never reads the device: no
``.item()``, ``.any()``, ``bool(tensor)`` or ``nonzero`` on the images' device, and mean/std are made once
per device; and its floats are exactly torchvision's (normalize after the same jitter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode

from training.augment import IMAGENET_MEAN, IMAGENET_STD, color_jitter, draw_jitter, to_model_input


def _batch(n: int, device: str, jitter_p: float = 1.0, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)).to(device)
    return images, torch.stack([draw_jitter(rng, jitter_p) for _ in range(n)])


class _HostToDevice(TorchDispatchMode):
    """Records every op that takes a host tensor and returns one on another device (a copy in)."""

    def __init__(self):
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = [*args, *(kwargs or {}).values()]
        if (isinstance(out, torch.Tensor) and out.device.type != "cpu"
                and any(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in flat)):
            self.copies.append(str(func))
        return out


def test_same_floats_as_torchvision_normalize():
    for jitter_p in (0.0, 0.5, 1.0):
        images, jitter = _batch(12, "cpu", jitter_p)
        reference = TF.normalize(color_jitter(images.float().div(255.0), jitter), IMAGENET_MEAN, IMAGENET_STD)
        assert torch.equal(to_model_input(images, jitter), reference)
    plain = TF.normalize(images.float().div(255.0), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(to_model_input(images), plain)


def test_no_device_read_and_mean_std_made_once():
    """On the meta device any read of a tensor's value raises (torchvision's normalize does: its
    ``(std == 0).any()``), so a meta run proves the path never waits for the device."""
    images, jitter = _batch(8, "meta")
    with pytest.raises(RuntimeError, match="meta"):  # what the check catches
        TF.normalize(images.float(), IMAGENET_MEAN, IMAGENET_STD)
    out = to_model_input(images, jitter)
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device.type == "meta"
    to_model_input(images)  # mean/std for this device exist now
    with _HostToDevice() as seen:
        to_model_input(images)
    assert seen.copies == [], seen.copies  # mean/std are not copied in per batch
    with _HostToDevice() as seen:
        to_model_input(images, jitter)
    assert len(seen.copies) == 1, seen.copies  # with jitter: the one index/factor table of the grouping


def test_no_sync_on_cuda_when_present():
    """With CUDA (a lent GPU), torch's sync debug mode turns any synchronising call into an error."""
    if not torch.cuda.is_available():
        return  # CPU machines: the meta-device test above is the check
    images, jitter = _batch(8, "cuda")
    to_model_input(images, jitter)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        to_model_input(images, jitter)
    finally:
        torch.cuda.set_sync_debug_mode("default")
