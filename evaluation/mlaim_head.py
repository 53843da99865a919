"""Apple's released attentive-probe heads (ml-aim's `aim_*_attnprobe_head_{best,last}_layers.pth`) as our
`AttentiveProbe`, and their top-1 on a benchmark's test split (config: `evaluation.heads`).

ml-aim's head is `AttentionPoolingClassifier(dim, classes, num_heads=trunk heads, num_queries=1,
qkv_bias=False, linear_bias=False, use_batch_norm=True, average_pool=True)` over the mean of the probed
blocks' raw outputs. Its state dict, under the `head.` prefix their loader merges with the backbone's:

    head.bn.running_mean [D], head.bn.running_var [D], head.bn.num_batches_tracked []   BatchNorm1d(D,
        affine=False, eps=1e-6) over batch x tokens   ->  norm.bn.*
    head.cls_token [1, 1, D]   the query, used as is (no q projection)  ->  query
    head.k.weight, head.v.weight [D, D]   bias-free                      ->  k.weight, v.weight
    head.linear.weight [C, D]   bias-free classifier                     ->  classifier.weight

Logits = linear(mean over queries of softmax(q k^T / sqrt(D / heads)) v), the per-head split of D as in
their reshape. With num_queries = 1 the mean is the identity; other query counts and biased heads are
refused rather than approximated.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from evaluation.benchmarks import registry
from evaluation.features import extract_split_features, feature_path, resolve_blocks
from evaluation.probe_grid import classification_metrics
from evaluation.probes import AttentiveProbe
from evaluation.results import write_result
from shared.atomic import atomic_path
from shared.config.benchmark_names import is_generic
from shared.config.evaluation import EvaluationConfig, ProbeHeadConfig, released_head_blocks
from shared.config.training import ModelConfig
from shared.errors import ConfigError, InputError
from shared.torchrun import rank_world
from training.model.mlaim_compat import read_mlaim_state_dict

log = logging.getLogger("openaim.eval")

# ml-aim name (without "head.") -> our AttentiveProbe name
_NAMES = {"cls_token": "query", "k.weight": "k.weight", "v.weight": "v.weight",
          "linear.weight": "classifier.weight", "bn.running_mean": "norm.bn.running_mean",
          "bn.running_var": "norm.bn.running_var", "bn.num_batches_tracked": "norm.bn.num_batches_tracked"}
_REQUIRED = ("cls_token", "k.weight", "v.weight", "linear.weight", "bn.running_mean", "bn.running_var")


def load_mlaim_head(path: str | Path, dim: int, num_heads: int) -> AttentiveProbe:
    """The head in `path` (a head .pth, or a merged backbone + head checkpoint) as an AttentiveProbe in
    eval mode, for a trunk `dim` wide with `num_heads` heads. Raises InputError naming what does not fit."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"probe head not found: {path}")
    state = read_mlaim_state_dict(path)
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    if not head:
        raise InputError(f"{path}: no head.* weights (not an ml-aim attentive-probe head)")
    missing = [k for k in _REQUIRED if k not in head]
    extra = sorted(set(head) - set(_NAMES))
    if missing or extra:
        what = f"missing head.{missing[0]}" if missing else f"unexpected head.{extra[0]} (a biased head?)"
        raise InputError(f"{path}: not ml-aim's AttentionPoolingClassifier layout: {what}")
    queries, width = head["cls_token"].shape[1], head["cls_token"].shape[-1]
    if queries != 1:
        raise InputError(f"{path}: {queries} queries; only ml-aim's released single-query heads are "
                         "supported")
    if width != dim:
        raise InputError(f"{path}: a head for a {width}-wide trunk, the checkpoint is {dim} wide")
    num_classes = head["linear.weight"].shape[0]
    probe = AttentiveProbe(dim, num_heads, num_classes)
    ours = {_NAMES[k]: v for k, v in head.items()}
    ours.setdefault("norm.bn.num_batches_tracked", torch.tensor(0))
    try:
        probe.load_state_dict(ours, strict=True)
    except RuntimeError as err:
        raise InputError(f"{path}: head weights do not fit: {str(err).splitlines()[-1].strip()}") from None
    return probe.eval()


def save_mlaim_head(probe: AttentiveProbe, path: str | Path) -> Path:
    """Write `probe` in ml-aim's head layout (what `load_mlaim_head` and ml-aim's loader read), atomically."""
    theirs = {ours: name for name, ours in _NAMES.items()}
    state = {f"head.{theirs[k]}": v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


@torch.no_grad()
def head_logits(probe: AttentiveProbe, feats: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """[n, N, D] features (mean of the probed blocks' raw outputs) -> [n, C] logits, in fp32."""
    probe.eval()
    device = next(probe.parameters()).device
    parts = [probe(feats[i:i + batch_size].to(device, torch.float32)).cpu()
             for i in range(0, len(feats), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, probe.classifier.out_features)


def head_for(heads: list[ProbeHeadConfig], checkpoint: str | Path | None,
             benchmark: str) -> ProbeHeadConfig | None:
    """The configured head for this checkpoint x benchmark (its spec name), if any."""
    if checkpoint is None:
        return None

    def spec_name(configured: str) -> str:  # a generic entry's spec is named after its resolved path
        return registry.generic_spec(configured).name if is_generic(configured) else configured

    # Path on both sides: the same normalisation, for a path or a URL (evaluation.checkpoints may be either)
    matches = (h for h in heads
               if Path(h.checkpoint) == Path(checkpoint) and spec_name(h.benchmark) == benchmark)
    return next(matches, None)


def head_blocks(ev: EvaluationConfig, head_cfg: ProbeHeadConfig, model, depth: int) -> tuple[list[int], str]:
    """The blocks a head reads (0-based) and where that choice came from, for the log.

    A released head's file name says it (``*_best_layers.pth``: the paper's best 6, ``*_last_layers.pth``:
    the last 6, whatever evaluation.n_blocks is); an explicit ``blocks`` list must then be those blocks.
    Any other head reads its ``blocks``, else evaluation.blocks."""
    released = released_head_blocks(head_cfg.path)
    if released is not None:
        marker, named = released
        blocks = resolve_blocks(named, 6, model, depth)
        if isinstance(head_cfg.blocks, list):
            explicit = resolve_blocks(head_cfg.blocks, ev.n_blocks, model, depth)
            if explicit != blocks:
                raise ConfigError(f"evaluation.heads: blocks {explicit} of {head_cfg.path} contradict its "
                                  f"file name: a {marker} head reads blocks {blocks}")
        return blocks, f"{named!r}, from the file name ({marker})"
    if head_cfg.blocks is not None:
        return resolve_blocks(head_cfg.blocks, ev.n_blocks, model, depth), "the head's blocks"
    return (resolve_blocks(ev.blocks, ev.n_blocks, model, depth),
            "evaluation.blocks (the file name names no released blocks)")


def evaluate_head(ev: EvaluationConfig, eval_dir: Path, entry, spec, root, model, model_cfg: ModelConfig,
                  ckpt_hash: str, head_cfg: ProbeHeadConfig, img_size: int,
                  progress) -> dict[str, Any] | None:
    """Top-1 of a released head on `spec`'s test split (features cached like the probes'; sharded across
    ranks under torchrun). Writes and returns the result record on rank 0 (None elsewhere); its probe is
    named "attentive", so the report compares it with the published attentive-probe numbers."""
    start = time.perf_counter()
    blocks, source = head_blocks(ev, head_cfg, model, model_cfg.depth)
    if rank_world()[0] == 0:
        log.info("%s %s: head %s reads blocks %s: %s", entry.name, spec.name, head_cfg.path, blocks, source)
    dataset = registry.load_split(spec, root, "test", ev.probe.val_fraction, ev.seed)
    data_key = {"benchmark": spec.name, "split": "test", "val_fraction": ev.probe.val_fraction,
                "seed": ev.seed, "max_items": None, "n": len(dataset)}
    path = feature_path(eval_dir, ckpt_hash, spec.name, "test", blocks, img_size, data_key)
    feats, skipped = extract_split_features(
        model, dataset, path, blocks, img_size, ev.batch_size, ev.num_workers,
        description=f"{spec.name}/test features", progress=progress,
        metadata={"benchmark": spec.name, "split": "test", "checkpoint_hash": ckpt_hash})
    if rank_world()[0] != 0:
        return None
    probe = load_mlaim_head(head_cfg.path, model_cfg.width, model_cfg.heads)
    classes = probe.classifier.out_features
    expected = int(spec.num_classes or len(dataset.classes))
    if classes != expected:
        raise InputError(f"{head_cfg.path}: a head for {classes} classes, {spec.name} has {expected}")
    metrics = classification_metrics(head_logits(probe, feats.feats), feats.labels, classes)
    record = {
        "checkpoint": entry.name, "checkpoint_path": str(entry.path), "checkpoint_hash": ckpt_hash,
        "step": entry.step, "benchmark": spec.name, "blocks": blocks, "img_size": img_size, "n_train": 0,
        "n_val": 0, "n_test": len(feats), "skipped_corrupt": skipped,
        "probes": {"attentive": {**metrics, "lr": None, "weight_decay": None, "head": str(head_cfg.path)}},
        "seconds": time.perf_counter() - start}
    log.info("%s %s: ml-aim head %s top-1 %.3f", entry.name, spec.name, head_cfg.path, metrics["top1"])
    write_result(eval_dir, record)
    return record
