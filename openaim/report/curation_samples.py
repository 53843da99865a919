"""The curation section's samples (this run only): the filter scores of the scored pool (sampled when it is
large) and example pairs kept and dropped at each step, with their images from the pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.pool import iter_pool
from openaim.report.collect import as_number
from shared.atomic import finished_files


@dataclass
class CurationSamples:
    """This run's scored pool: the scores (all of them, or a uniform 1-in-``stride`` sample of a large
    pool), the selection threshold, and a few kept and dropped pairs."""

    scores: list[float]
    kept_scores: list[float]
    threshold: float | None
    examples: list[dict]  # {"image": jpg bytes, "caption", "score", "kept": bool, "reason"}
    pool_size: int = 0
    stride: int = 1


# The report reads at most about this many scored rows (every k-th row of a larger pool): the histogram's
# shape and the example pairs do not need more, and a 12.8B-pair pool must not be loaded whole.
SAMPLE_ROWS = 200_000


def _example_picks(rows: list[dict], per_group: int) -> list[dict]:
    """Kept pairs (best, middle, just above the threshold) and dropped ones (just below it, the worst, and
    one per dedup / safety reason): the boundary is where a reader checks the filter."""
    kept = sorted((r for r in rows if r["kept"]), key=lambda r: -r["score"])
    by_score = sorted(
        (r for r in rows if not r["kept"] and r["reason"].startswith("score")), key=lambda r: -r["score"]
    )
    masked = [r for r in rows if not r["kept"] and not r["reason"].startswith("score")]
    picks: list[dict] = []

    def spread(items: list[dict], n: int) -> list[dict]:
        if len(items) <= n:
            return items
        return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]

    picks += spread(kept, per_group)
    picks += spread(by_score, max(1, per_group - min(2, len(masked))))
    seen_reasons: set[str] = set()
    for r in masked:
        if r["reason"] not in seen_reasons and len(seen_reasons) < 2:
            seen_reasons.add(r["reason"])
            picks.append(r)
    return picks


def _rows_for(folder: Path, columns: list[str], uids: set[str]) -> dict[str, dict]:
    """{uid: row} of the rows of a folder's parquet parts whose uid is in ``uids``, read batch by batch."""
    wanted = pa.array(sorted(uids), type=pa.string())
    out: dict[str, dict] = {}
    for path in finished_files(folder, "*.parquet"):
        for batch in pq.ParquetFile(path).iter_batches(columns=["uid", *columns], batch_size=1 << 16):
            hits = batch.filter(pc.is_in(batch.column("uid").cast(pa.string()), value_set=wanted))
            for row in hits.to_pylist():
                out[row["uid"]] = row
    return out


def _sampled_scores(folder: Path) -> tuple[list[str], list[float], int, int]:
    """(uids, scores, rows in the score parts, stride): every ``stride``-th row (in part order), at most
    ~SAMPLE_ROWS of them."""
    files = [pq.ParquetFile(p) for p in finished_files(folder, "*.parquet")]
    n = sum(f.metadata.num_rows for f in files)
    stride = max(1, math.ceil(n / SAMPLE_ROWS))
    uids: list[str] = []
    scores: list[float] = []
    seen = 0
    for file in files:
        for batch in file.iter_batches(columns=["uid", "score"], batch_size=1 << 16):
            first = (-seen) % stride  # the first row of this batch whose global index is a multiple of stride
            uids += batch.column("uid").to_pylist()[first::stride]
            scores += batch.column("score").to_pylist()[first::stride]
            seen += batch.num_rows
    return uids, [float(v) for v in scores], n, stride


def read_curation_samples(curation_dir: Path, manifest: dict | None, notes: list[str],
                          per_group: int = 4) -> CurationSamples | None:
    """Scores and example pairs from the curation's own files, each a folder of parquet parts:
    scores/parts/, dedup/keep/ and safety/keep/ (keep flag and reason per pair), pairs/ (captions), and
    pool/*.tar (images). A pair is kept when both masks keep it and its score reaches the threshold
    (curation.select's rule). None when the scores are absent."""
    scores_path = curation_dir / "scores" / "parts"
    if not finished_files(scores_path, "*.parquet"):
        return None
    threshold = as_number((manifest or {}).get("threshold"))
    try:
        uids, scores, n, stride = _sampled_scores(scores_path)
        wanted = set(uids)
        masks = {name: _rows_for(curation_dir / name / "keep", ["keep", "reason"], wanted)
                 for name in ("dedup", "safety") if finished_files(curation_dir / name / "keep", "*.parquet")}
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        notes.append(f"curation files in {curation_dir} are unreadable ({type(exc).__name__}: {exc})")
        return None
    rows = []
    for uid, score in zip(uids, scores, strict=True):
        dropped_by = [f"{name}: {mask[uid].get('reason') or 'dropped'}" for name, mask in masks.items()
                      if uid in mask and not mask[uid]["keep"]]
        below = threshold is not None and score < threshold
        reason = "; ".join(dropped_by) or (f"score below the threshold {threshold:.4f}" if below else "kept")
        rows.append({"uid": uid, "score": score, "kept": reason == "kept", "reason": reason})
    picks = _example_picks(rows, per_group)
    wanted = {r["uid"] for r in picks}
    images: dict[str, bytes] = {}
    captions: dict[str, dict] = {}
    try:
        captions = _rows_for(curation_dir / "pairs", ["caption"], wanted)
        for uid, jpg, _, _ in iter_pool(curation_dir / "pool", wanted):
            images[uid] = jpg
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        notes.append(f"pairs or pool images in {curation_dir} are unreadable ({type(exc).__name__}: {exc})")
    examples = [{**r, "image": images[r["uid"]], "caption": (captions.get(r["uid"]) or {}).get("caption", "")}
                for r in picks if r["uid"] in images]
    return CurationSamples(scores=scores, kept_scores=[r["score"] for r in rows if r["kept"]],
                           threshold=threshold, examples=examples, pool_size=n, stride=stride)
