"""Train our own small data filtering network: an open_clip CLIP on the mini web's high-quality pairs.

The model is open_clip's own `CLIP` class built from a custom config dict and trained with open_clip's
`ClipLoss`; it is saved as an open_clip `local-dir:` folder (open_clip_config.json with `model_cfg` and
`preprocess_cfg`, plus open_clip_model.safetensors), so `open_clip.create_model_and_transforms(
"local-dir:<out_dir>")` and `open_clip.get_tokenizer(...)` load it back, which is what
`load_filter_network(FilterNetworkConfig(model="own"), out_dir)` does.

Why the data is decoded once into memory: the high-quality set is small (about 10^3 pairs of 64 px
images), so the 2 cores are better spent on matmuls than on re-decoding JPEGs every epoch; a light
random crop + flip keeps the image tower from memorising.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from shared.atomic import atomic_dir, atomic_write_json
from shared.config.curation import TrainFilterConfig
from shared.errors import InputError
from shared.progress import progress_bar
from shared.schedule import warmup_cosine
from shared.wds_reader import read_samples

# Versioned by its step: bump VERSION in openaim/steps/train_filter.py when this changes the step's results.

log = logging.getLogger("openaim.curation")

# CLIP's published normalisation; open_clip's default for models without a pretrained tag.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer (BPE) vocabulary


def model_config(cfg: TrainFilterConfig) -> dict:
    """The open_clip model_cfg of our small CLIP."""
    head_width = max(16, cfg.vision_width // 4)  # 4 heads in the vision tower
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": cfg.image_size, "layers": cfg.vision_layers, "width": cfg.vision_width,
                       "patch_size": cfg.patch_size, "head_width": head_width},
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": VOCAB_SIZE, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers},
    }


def preprocess_config(cfg: TrainFilterConfig) -> dict:
    return {"size": cfg.image_size, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
            "resize_mode": "shortest"}


def read_pairs(hq_dir: Path) -> tuple[list[bytes], list[str]]:
    """All (jpg bytes, caption) pairs of hq_dir/hq-*.tar, in shard and key order."""
    shards = sorted(Path(hq_dir).glob("hq-*.tar"))
    if not shards:
        raise InputError(f"no high-quality shards hq-*.tar in {hq_dir}")
    jpgs: list[bytes] = []
    caps: list[str] = []
    try:
        for shard in shards:  # this one process reads every shard, even as rank 0 of a torchrun build-dataset
            for sample in read_samples(shard):
                if "jpg" in sample and "txt" in sample:
                    jpgs.append(sample["jpg"])
                    caps.append(sample["txt"].decode("utf-8", "replace").strip())
    except Exception as err:
        raise InputError(f"cannot read high-quality shards in {hq_dir}: {err}") from err
    if len(jpgs) < 2:
        raise InputError(f"{hq_dir} holds {len(jpgs)} usable jpg+txt pairs; need at least 2 to train")
    return jpgs, caps


def _decode(jpgs: list[bytes], transform) -> torch.Tensor:
    return torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpgs])  # [n, 3, S, S]


def _augment(images: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Random shift by up to `pad` px (reflect-padded crop) and horizontal flip, per batch."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
    out = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def train_filter_network(cfg: TrainFilterConfig, hq_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Train the small CLIP on hq_dir's pairs; write an open_clip local-dir folder at out_dir; return it."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if cfg.threads:  # otherwise torch's default, which follows OMP_NUM_THREADS when it is set
        torch.set_num_threads(cfg.threads)
    jpgs, caps = read_pairs(Path(hq_dir))
    mcfg = model_config(cfg)
    model = open_clip.CLIP(**mcfg)
    transform = open_clip.image_transform(cfg.image_size, is_train=False, mean=MEAN, std=STD,
                                          interpolation="bicubic", resize_mode="shortest")
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg.context_length)
    images = _decode(jpgs, transform)  # [n, 3, S, S]
    tokens = tokenizer(caps)  # [n, context_length]
    n = len(caps)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)  # drop the ragged last batch: contrastive loss wants full batches
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, total // 20)

    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    no_decay = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    # The factor on cfg.lr: warm-up from 1/warmup of it, then cosine to 0 (the probes' schedule).
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total, warmup, peak=1.0, start=1.0 / warmup))
    loss_fn = open_clip.ClipLoss()
    history: list[dict] = []
    model.train()
    with progress_bar() as progress:
        task = progress.add_task("training the filter network", total=total)
        for epoch in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            running = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * batch:(step + 1) * batch]
                x = _augment(images[idx], gen, pad=max(1, cfg.image_size // 16))
                img_f, txt_f, scale = model(x, tokens[idx])  # [B, d] normalised, [B, d], scalar
                loss = loss_fn(img_f, txt_f, scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():  # CLIP clamps the temperature so logits stay <= 100
                    model.logit_scale.clamp_(0, math.log(100))
                running += float(loss.detach())
                progress.advance(task)
            history.append({"epoch": epoch, "loss": running / steps_per_epoch})
            log.info("filter epoch %d loss %.4f", epoch, history[-1]["loss"])
    model.eval()

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / "open_clip_config.json",
                          {"model_cfg": mcfg, "preprocess_cfg": preprocess_config(cfg)})
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "open_clip_model.safetensors"))
        atomic_write_json(tmp / "train_log.json", {"pairs": n, "seed": seed, "steps": total,
                                                    "config": cfg.model_dump(mode="json"),
                                                    "history": history})
    return out_dir
