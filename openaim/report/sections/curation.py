"""The report's curation section: the funnel, the filters side by side, and sample images kept and dropped."""

from __future__ import annotations

from openaim.report import charts
from openaim.report.collect import funnel, parallel_filters
from openaim.report.curation_samples import CurationSamples
from openaim.report.document import Block, Bullets, Figure, Heading, Images, Table, text
from openaim.report.run_data import RunData


def curation(runs: list[RunData], images: Images, samples: CurationSamples | None = None) -> list[Block]:
    blocks: list[Block] = [Heading("Curation", anchor="curation")]
    funnels = [(run.label, funnel(run.manifest), parallel_filters(run.manifest)) for run in runs]
    png = charts.curation_funnel(funnels)
    if png is None:
        return blocks + [text("No curation manifest yet: run `openaim build-dataset`.")]
    images["curation_funnel.png"] = png
    blocks.append(
        Figure(
            "curation_funnel.png",
            "Curation funnel",
            "Dedup and safety are independent masks over the same scored pairs (hatched: what each "
            "keeps alone); the funnel continues with the pairs that pass both.",
        )
    )
    with_funnel = [(label, dict(chain), parallel) for label, chain, parallel in funnels if chain]
    stages = list(dict.fromkeys(s for _, chain, _ in funnels for s, _ in chain))
    rows = [
        [stage] + [f"{chain[stage]:,}" if stage in chain else "—" for _, chain, _ in with_funnel]
        for stage in stages
    ]
    for name in dict.fromkeys(n for _, _, parallel in with_funnel for n, _, _ in parallel):
        cells = []
        for _, _, parallel in with_funnel:
            hit = [(kept, seen) for n, kept, seen in parallel if n == name]
            cells.append(f"{hit[0][0]:,} of {hit[0][1]:,}" if hit else "—")
        rows.append([f"{name} alone (parallel filter)"] + cells)
    blocks.append(
        Table(
            ["pairs"] + [label for label, _, _ in with_funnel],
            rows,
            caption="Pairs left along the chain; the parallel filters each see the scored pairs.",
        )
    )
    facts = []
    for run in [run for run in runs if run.manifest]:
        m = run.manifest
        threshold = m.get("threshold")
        shown = f"{threshold:.4f}" if isinstance(threshold, (int, float)) else "—"
        facts.append(
            [
                (
                    f"{run.label}: keep fraction {m.get('fraction', '—')}, score threshold {shown}, "
                    f"kept {m.get('kept', '—')} pairs, config hash {str(m.get('config_hash', '—'))[:12]}"
                )
            ]
        )
        failures = m.get("download_failures") or m.get("failures")
        if isinstance(failures, dict) and failures:
            top = sorted(failures.items(), key=lambda kv: -_num(kv[1]))[:6]
            facts.append([f"{run.label}: download failures: " + ", ".join(f"{k} {v}" for k, v in top)])
        quality = m.get("quality")
        if isinstance(quality, dict) and quality:
            shown = {k: v for k, v in quality.items() if not isinstance(v, (dict, list))}
            facts.append(
                [
                    f"{run.label}: quality vs the mini web's truth: "
                    + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in shown.items())
                ]
            )
        if m.get("ran") is not None or m.get("reused") is not None:
            ran, reused = ", ".join(m.get("ran") or []) or "none", ", ".join(m.get("reused") or []) or "none"
            facts.append([f"{run.label}: steps ran: {ran}; reused: {reused}"])
    if facts:
        blocks.append(Bullets(facts))
    blocks += curation_samples(runs, samples, images)
    return blocks


def curation_samples(runs: list[RunData], samples: CurationSamples | None, images: Images) -> list[Block]:
    """This run's score histogram with the threshold (other runs' thresholds beside it) and example pairs."""
    if samples is None:
        return [
            text(
                f"{runs[0].label}: no scored pool on disk (curation/scores/parts/): no score "
                "histogram or example pairs."
            )
        ]
    blocks: list[Block] = []
    others = [
        (run.label, float(run.manifest["threshold"]))
        for run in runs[1:]
        if run.manifest and isinstance(run.manifest.get("threshold"), (int, float))
    ]
    png = charts.score_histogram(samples.scores, samples.kept_scores, samples.threshold, others)
    if png is not None:
        images["score_histogram.png"] = png
        blocks.append(
            Figure(
                "score_histogram.png",
                "Filter-network score histogram with the selection threshold",
                f"{runs[0].label}: "
                + ("every scored pair" if samples.stride == 1 else
                   f"every {samples.stride}th of the {samples.pool_size:,} scored pairs")
                + "; selected = at or above the threshold and kept by both dedup and safety.",
            )
        )
    png = charts.pair_examples(samples.examples)
    if png is not None:
        images["curation_examples.png"] = png
        blocks.append(
            Figure(
                "curation_examples.png",
                "Kept and dropped image-text pairs",
                f"{runs[0].label}: kept pairs (best, middle, near the threshold) and dropped ones "
                "(just below the threshold, the lowest, and dedup/safety drops), with score and reason.",
            )
        )
    return blocks


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0
