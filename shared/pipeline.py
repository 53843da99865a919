"""The pipeline graph: web -> curation -> training -> evaluation -> report, over the stage cache.

Each stage is imported lazily; a stage that does not exist yet is reported as missing, not fatal.
"""

from __future__ import annotations

import importlib
import logging

from rich.console import Console

log = logging.getLogger("openaim.pipeline")
console = Console()

# (step label, module, function taking the config)
STAGES = [
    ("build-dataset", "curation.pipeline", "build_dataset"),
    ("train", "training.loop", "train_from_config"),
    ("eval", "evaluation.run", "evaluate_from_config"),
    ("report", "evaluation.report", "report_from_config"),
]


def _stage_fn(module: str, fn: str):
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError):
        return None


def run_pipeline(cfg) -> None:
    missing = []
    for label, module, fn in STAGES:
        stage = _stage_fn(module, fn)
        if stage is None:
            missing.append(label)
            continue
        console.rule(f"[bold]{label}")
        stage(cfg)
    if missing:
        console.print(f"[yellow]not built yet:[/] {', '.join(missing)}")


def run_demo(cfg) -> None:
    from shared.miniweb.generate import generate_web
    from shared.miniweb.server import serve_in_background

    console.rule("[bold]mini web")
    generate_web(cfg.web, cfg.web_dir, skip_if_done=True)
    with serve_in_background(cfg.web_dir, host=cfg.web.host, port=cfg.web.port):
        run_pipeline(cfg)


def print_status(cfg) -> None:
    console.print("status is not built yet")
