"""The extract step as build-dataset runs it (curation.extract_parts.run_extract), on the local engine in
this process: what the tests that need pairs from WARC/WAT/parquet sources call."""

from __future__ import annotations

from pathlib import Path

from curation.engine import LocalEngine
from curation.extract_parts import run_extract
from shared.config.curation import ExtractConfig


def extract_pairs(cfg: ExtractConfig, sources: list[str], out_dir: Path, workers: int = 1) -> dict:
    """Pairs of ``sources`` into the folder ``out_dir`` (parquet parts; pyarrow reads it as one table),
    the counts into ``out_dir``.json; returns the counts."""
    engine = LocalEngine(workers, scratch_root=Path(out_dir).parent)
    try:
        stats = run_extract(engine, cfg, sources, Path(out_dir), Path(f"{out_dir}.json"))
        stats.pop("outputs_digest")  # the step's identity, for the stage cache
        return stats
    finally:
        engine.close()
