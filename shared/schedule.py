"""The one learning-rate schedule: warm-up, then cosine decay to 0.

Here, at the foundation, because every stage uses it: pretraining (training.optim.lr_at), the filter
network (curation.train_filter) and the probes (evaluation.probe_grid). A pure function of the step (no
hidden state), so a resumed run sets exactly the learning rate an uninterrupted run would have used.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup: int, peak: float, start: float = 0.0) -> float:
    """Linear from `start` at step 0 to `peak` at step `warmup`, then cosine to 0 at `total_steps`.
    `step` is 0-based: the lr of the optimizer update of step `step`."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
