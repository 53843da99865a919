"""`openaim report`: the benchmark report as one self-contained HTML page and a Markdown file with PNGs.

    path = report_from_config(cfg)    # cfg.report_dir/report.html (+ report.md and the PNGs beside it)

Reads this run's outputs (eval results, missing and failed benchmarks, eval's run info, stage wall times,
training metrics, the curation manifest, scores and pool) and those of every run directory in
cfg.report.compare, shown side by side. Absent inputs are named in the report.
"""

from __future__ import annotations

import datetime as _dt
import logging
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from openaim.report.collect import benchmark_catalog, load_compare_run, load_run
from openaim.report.curation_samples import read_curation_samples
from openaim.report.document import text
from openaim.report.html import render_html
from openaim.report.markdown import render_markdown
from openaim.report.sections.benchmarks import accuracy_over_training, benchmarks
from openaim.report.sections.curation import curation
from openaim.report.sections.overview import summary
from openaim.report.sections.pretraining import loss_vs_probe, pretraining
from openaim.report.sections.run_details import probe_details, provenance, runtime
from shared import __version__
from shared.atomic import atomic_write_bytes, atomic_write_text
from shared.config.root import OpenAIMConfig
from shared.errors import InputError, OpenAIMError
from shared.progress import progress_bar
from shared.stage_cache import hash_json

log = logging.getLogger("openaim.report")

__all__ = ["collect_runs", "provenance_facts", "report_from_config"]


def collect_runs(cfg: OpenAIMConfig) -> list:
    """This run first, then each directory of cfg.report.compare (a missing directory is an InputError)."""
    runs = [load_run(cfg.name, cfg.eval_dir, cfg.training_dir, cfg.curation_dir, root=Path(cfg.workdir))]
    for directory in cfg.report.compare:
        run = load_compare_run(directory)
        if any(
            r.root is not None and run.root is not None and r.root.resolve() == run.root.resolve()
            for r in runs
        ):
            continue  # the same directory twice (or this run itself) would only duplicate columns
        labels = {r.label for r in runs}
        base, n = run.label, 2
        while run.label in labels:
            run.label, n = f"{base} ({n})", n + 1
        runs.append(run)
    return runs


def git_commit() -> str:
    """HEAD of the repository this code runs from, or "unknown" (not a git checkout, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def openaim_version() -> str:
    try:
        return version("openaim")
    except PackageNotFoundError:  # not installed as a distribution: use the source tree's version
        return __version__


def provenance_facts(cfg: OpenAIMConfig) -> dict[str, str]:
    return {
        "config sha256": hash_json(cfg.model_dump(mode="json"))[:16],
        "run name": cfg.name,
        "workdir": str(cfg.workdir),
        "git commit": git_commit(),
        "openaim version": openaim_version(),
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def report_from_config(cfg: OpenAIMConfig) -> Path:
    """Write cfg.report_dir/report.html and report.md (+ PNGs); returns the HTML's path."""
    if not Path(cfg.workdir).is_dir():  # a typo'd workdir: say so, and create nothing there
        raise InputError(f"workdir {cfg.workdir} does not exist: nothing to report (run `openaim run` first)")
    out = Path(cfg.report_dir)
    with progress_bar() as progress:
        task = progress.add_task("report: reading results", total=4)
        runs = collect_runs(cfg)
        catalog = benchmark_catalog(cfg.evaluation.data_root, cfg.web_dir)
        facts = provenance_facts(cfg)
        samples = read_curation_samples(Path(cfg.curation_dir), runs[0].manifest, runs[0].notes)
        progress.update(task, advance=1, description="report: drawing charts")
        images: dict[str, bytes] = {}
        blocks = (
            summary(runs, cfg.report.target_gap_points)
            + benchmarks(catalog, runs, images)
            + loss_vs_probe(runs, images)
            + accuracy_over_training(catalog, runs, images)
            + pretraining(runs, images)
            + curation(runs, images, samples)
            + probe_details(runs)
            + runtime(runs)
            + provenance(cfg.training, Path(cfg.training_dir), runs, facts)
        )
        progress.update(task, advance=1, description="report: writing")
        subtitle = text(f"Run {cfg.name} · {facts['generated']} · commit {facts['git commit'][:10]}")
        blocks.insert(0, subtitle)
        try:
            # PNGs first, then the Markdown that points at them, then the HTML: a reader never sees a
            # report whose pictures are not there yet; each file is replaced atomically.
            for name, data in images.items():
                atomic_write_bytes(out / name, data)
            atomic_write_text(out / "report.md", render_markdown(cfg.report.title, blocks))
            progress.update(task, advance=1)
            html_path = out / "report.html"
            atomic_write_text(html_path, render_html(cfg.report.title, blocks, images))
        except OSError as exc:
            raise OpenAIMError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
        progress.update(task, advance=1)
    log.info("report: %s (%d figures)", html_path, len(images))
    return html_path
