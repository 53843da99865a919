"""The data filtering network (DFN): a CLIP used only to score image-text pairs by cosine similarity.

Any open_clip model can serve: Apple's public filter network (`hf-hub:apple/DFN-public`), a built-in
architecture with a pretrained tag (`ViT-B-32` + `laion2b_s34b_b79k`), a local checkpoint, or our own
small CLIP trained by `openaim train-filter` ("own"), which is saved as an open_clip `local-dir:` folder
(open_clip_config.json + open_clip_model.safetensors) so open_clip itself loads it back.
Nothing is downloaded at test time; a model that cannot be loaded is a one-line InputError.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from huggingface_hub import constants, try_to_load_from_cache
from PIL import Image

from shared.config.curation import FilterNetworkConfig
from shared.errors import InputError
from shared.stage_cache import hash_file

OWN_CONFIG = "open_clip_config.json"
OWN_WEIGHTS = "open_clip_model.safetensors"


class FilterNetwork:
    """An open_clip model in eval mode with its eval transform and tokenizer."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, model_id: str, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.preprocess = preprocess  # PIL image -> float tensor [3, H, W]
        self.tokenizer = tokenizer  # list[str] -> LongTensor [n, context_length]
        self.model_id = model_id
        self.device = device

    @property
    def embed_dim(self) -> int:
        return self._dim()

    def encode_image_tensor(self, images: torch.Tensor) -> np.ndarray:
        """images [n, 3, H, W] already preprocessed -> [n, d] float32, L2-normalised."""
        with torch.inference_mode():
            feats = self.model.encode_image(images.to(self.device), normalize=True)
        return feats.float().cpu().numpy()

    def encode_token_tensor(self, tokens: torch.Tensor) -> np.ndarray:
        """tokens [n, context_length] -> [n, d] float32, L2-normalised."""
        with torch.inference_mode():
            feats = self.model.encode_text(tokens.to(self.device), normalize=True)
        return feats.float().cpu().numpy()

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self._dim()), dtype=np.float32)
        batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images])  # [n, 3, H, W]
        return self.encode_image_tensor(batch)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim()), dtype=np.float32)
        return self.encode_token_tensor(self.tokenizer(list(texts)))

    def _dim(self) -> int:
        return int(self.encode_token_tensor(self.tokenizer(["a"])).shape[1])


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _resolve(cfg: FilterNetworkConfig, own_checkpoint_dir: Path | None) -> tuple[str, str | None, str]:
    """(open_clip model name, pretrained tag or file, id for the manifest)."""
    if cfg.model == "own":
        if own_checkpoint_dir is None:
            raise InputError("filter network 'own' needs the directory written by `openaim train-filter`")
        own = Path(own_checkpoint_dir)
        weights = own / OWN_WEIGHTS
        if not (own / OWN_CONFIG).is_file() or not weights.is_file():
            raise InputError(f"no trained filter network in {own} (expected {OWN_CONFIG} and {OWN_WEIGHTS}); "
                             "run `openaim train-filter` first")
        return f"local-dir:{own}", None, f"own@{hash_file(weights)[:12]}"
    if cfg.checkpoint:
        ckpt = Path(cfg.checkpoint)
        if ckpt.is_dir():  # an open_clip folder: config + weights side by side
            if not (ckpt / OWN_CONFIG).is_file():
                raise InputError(f"filter checkpoint folder {ckpt} has no {OWN_CONFIG}")
            return f"local-dir:{ckpt}", None, f"local-dir:{ckpt}"
        if not ckpt.is_file():
            raise InputError(f"filter checkpoint not found: {ckpt}")
        return cfg.model, str(ckpt), f"{cfg.model}@{ckpt.name}:{hash_file(ckpt)[:12]}"
    if cfg.model.startswith(("hf-hub:", "local-dir:")):
        return cfg.model, None, cfg.model
    return cfg.model, cfg.pretrained, f"{cfg.model}:{cfg.pretrained}" if cfg.pretrained else cfg.model


def _check_hub_reachable(model_id: str) -> None:
    """Fail in seconds, not after the hub client's retries, when an hf-hub model is neither cached nor
    reachable."""
    repo = model_id.removeprefix("hf-hub:").split("@")[0]
    if isinstance(try_to_load_from_cache(repo, "open_clip_config.json"), str):
        return  # cached: open_clip loads it without the network
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
    except OSError as err:
        raise InputError(f"cannot load filter network {model_id!r}: not in the local Hugging Face cache and "
                         f"{endpoint.hostname} is unreachable ({_one_line(err)})") from err


def load_filter_network(cfg: FilterNetworkConfig, own_checkpoint_dir: Path | None = None,
                        device: str = "cpu") -> FilterNetwork:
    """Load the filter network named by ``cfg`` with open_clip (see the module docstring for the forms)."""
    name, pretrained, model_id = _resolve(cfg, own_checkpoint_dir)
    if cfg.checkpoint is None and cfg.model != "own" and not name.startswith(("hf-hub:", "local-dir:")):
        known = set(open_clip.list_models())
        if name.replace("/", "-") not in known:
            raise InputError(f"unknown open_clip model {name!r} (see open_clip.list_models())")
        if (pretrained and pretrained not in open_clip.list_pretrained_tags_by_model(name)
                and not Path(pretrained).is_file()):
            raise InputError(f"unknown pretrained tag {pretrained!r} for open_clip model {name}")
    if name.startswith("hf-hub:"):
        _check_hub_reachable(name)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained,
                                                                     device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except InputError:
        raise
    except Exception as err:  # no network, missing file, bad weights: say which model and why, in one line
        raise InputError(f"cannot load filter network {model_id!r}: {type(err).__name__}: "
                         f"{_one_line(err)}") from err
    return FilterNetwork(model, preprocess, tokenizer, model_id, device)
