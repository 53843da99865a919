"""Published numbers we compare against, each with where it comes from.

Only figures a reader can check: AIM's frozen-trunk attentive-probe ImageNet-1k top-1 as listed in the
README of apple/ml-aim (the model zoo table), for probes on the last 6 blocks and on the "best" 6 blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

ML_AIM_README = "https://github.com/apple/ml-aim#pre-trained-checkpoints"
PAPER = "https://arxiv.org/abs/2401.08541"


@dataclass(frozen=True)
class PublishedResult:
    model: str  # e.g. "AIM-0.6B"
    params: str  # parameter count as published
    benchmark: str  # registry name
    probe: str  # "attentive" (frozen trunk)
    top1_last6: float  # percent, probe on the mean of the last 6 blocks
    top1_best6: float  # percent, probe on the 6 best blocks (600M 14-19, 1B/3B 12-17, 7B 14-19)
    source: str


AIM_IMAGENET_ATTENTIVE: list[PublishedResult] = [
    PublishedResult("AIM-0.6B", "0.6B", "imagenet-1k", "attentive", 78.5, 79.4, ML_AIM_README),
    PublishedResult("AIM-1B", "1.2B", "imagenet-1k", "attentive", 80.6, 82.3, ML_AIM_README),
    PublishedResult("AIM-3B", "2.7B", "imagenet-1k", "attentive", 82.2, 83.3, ML_AIM_README),
    PublishedResult("AIM-7B", "6.5B", "imagenet-1k", "attentive", 82.4, 84.0, ML_AIM_README),
]
