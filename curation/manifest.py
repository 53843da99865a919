"""``manifest.json`` of a curated dataset: what went in and out of every step, and how good the result is.

The quality block exists when the pool came from the mini web, whose ``truth.parquet`` says what each link
really is: we measure the precision of what we kept, duplicates kept per group, benchmark test images
leaked into the training set, and whether any unsafe URL ever reached the server (its request log).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow.parquet as pq

from curation.select import subset_to_uids
from shared import fsio
from shared.config.root import OpenAIMConfig
from shared.stage_cache import hash_json

GOOD_KINDS = ("match", "near_dup", "exact_dup")


def quality_block(web_dir: Path, kept: list[tuple[str, str]]) -> dict | None:
    """Quality of the kept (url, caption) pairs against the mini web's truth; None without a truth file."""
    truth_path = web_dir / "truth.parquet"
    if not truth_path.is_file():
        return None
    t = pq.read_table(truth_path).to_pylist()
    by_pair = {(r["url"], " ".join((r.get("alt") or "").split())): r for r in t}
    by_url = {r["url"]: r for r in t}
    kinds: Counter = Counter()
    groups: Counter = Counter()
    for url, caption in kept:
        row = by_pair.get((url, caption)) or by_url.get(url)
        kind = row["kind"] if row else "unknown"
        kinds[kind] += 1
        if row and row.get("group") is not None and kind in GOOD_KINDS:
            groups[row["group"]] += 1
    n = len(kept)
    good = sum(kinds[k] for k in GOOD_KINDS)
    return {
        "kept": n,
        "kept_by_kind": dict(sorted(kinds.items())),
        "precision": round(good / n, 4) if n else None,
        "max_kept_per_duplicate_group": max(groups.values(), default=0),
        "duplicate_groups_kept_twice": sum(1 for v in groups.values() if v > 1),
        "eval_leak_kept": kinds["eval_leak"],
        "unsafe_urls_requested": unsafe_requests(web_dir, t),
    }


def unsafe_requests(web_dir: Path, truth_rows: list[dict]) -> int | None:
    """How many requests in the mini web's ``requests.log`` hit a path only an unsafe URL points at."""
    log_path = web_dir / "requests.log"
    if not log_path.is_file():
        return None
    unsafe_paths = {urlsplit(r["url"]).path for r in truth_rows
                    if r["kind"] == "unsafe_url" and r["url"].lower().startswith("http")}
    safe_paths = {urlsplit(r["url"]).path for r in truth_rows if r["kind"] != "unsafe_url"}
    unsafe_paths -= safe_paths
    count = 0
    for line in log_path.read_text(errors="replace").splitlines():
        path = line.strip().split(" ")[-1] if line.strip() else ""
        if urlsplit(path).path in unsafe_paths:
            count += 1
    return count


def build_manifest(*, config_hash: str, steps: dict[str, dict], ran: list[str], reused: list[str],
                   select: dict, failures: dict, quality: dict | None) -> dict:
    return {
        "config_hash": config_hash,
        "steps": steps,
        "ran": ran,
        "reused": reused,
        "fraction": select.get("fraction"),
        "threshold": select.get("threshold"),
        "kept": select.get("kept"),
        "download_failures": failures,
        "quality": quality,
    }


def _read_json(path: str) -> dict:
    return json.loads(fsio.read_bytes(path)) if fsio.isfile(path) else {}


def _kept_pairs(curation_dir: str) -> list[tuple[str, str]]:
    """(url, caption) of the kept pairs: the pairs whose uid is in the subset (a mini-web-sized read)."""
    with fsio.open_file(fsio.join(curation_dir, "subset.npy")) as f:
        kept_uids = set(subset_to_uids(np.load(f)))
    kept = []
    for part, _ in fsio.list_files(fsio.join(curation_dir, "pairs"), "*.parquet"):
        with fsio.open_file(part) as f:
            pairs = pq.read_table(f, columns=["uid", "url", "caption"]).to_pydict()
        kept += [(u, c) for uid, u, c in zip(pairs["uid"], pairs["url"], pairs["caption"], strict=True)
                 if uid in kept_uids]
    return kept


def curation_manifest(cfg: OpenAIMConfig, ran: list[str], reused: list[str]) -> dict:
    """The manifest of a finished build-dataset run, from the steps' stats files (``cfg``: the root config:
    the curation section and the web dir the quality block reads)."""
    d = os.fspath(cfg.curation_dir)  # a path or a URL
    ex, dl, sel = (_read_json(fsio.join(d, name))
                   for name in ("extract_stats.json", "download_stats.json", "select_stats.json"))
    dd, sf = _read_json(fsio.join(d, "dedup", "stats.json")), _read_json(fsio.join(d, "safety", "stats.json"))
    step_counts = {
        "extract": {"in": ex.get("links"), "out": ex.get("kept"), "records": ex.get("records"),
                    "corrupt_records": ex.get("corrupt_records"),
                    "oversized_records": ex.get("oversized_records"), "dropped": ex.get("dropped")},
        "download": {"in": dl.get("requested"), "out": dl.get("downloaded"),
                     "refused_before_download": dl.get("refused_before_download")},
        "score": {"in": dl.get("downloaded"), "out": dd.get("in")},
        "dedup": dd, "safety": sf,
        "select": {"in": sel.get("in"), "out": sel.get("out"), "shards": sel.get("shards"),
                   "faces_blurred": sel.get("faces_blurred")},
    }
    has_truth = (cfg.web_dir / "truth.parquet").is_file()
    quality = quality_block(cfg.web_dir, _kept_pairs(d)) if has_truth else None
    return build_manifest(config_hash=hash_json(cfg.curation.model_dump(mode="json")), steps=step_counts,
                          ran=ran, reused=reused, select=sel | {"kept": sel.get("out")},
                          failures=dl.get("failures", {}), quality=quality)
