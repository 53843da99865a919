"""report: the HTML + Markdown report over every stage's outputs (openaim.report), with the last two
archived runs beside this one. Cheap and read-only on the others: it runs every time, no record."""

from __future__ import annotations

from openaim.history import history_runs
from openaim.report import report_from_config
from openaim.steps.base import RunContext, Step
from shared.cli_common import say


class Report(Step):
    name, stage = "report", "report"
    VERSION = 1
    cached = False
    reads = ("train", "eval")
    writes = ("report/report.html", "report/report.md")

    def run(self, ctx: RunContext) -> None:
        with_history = ctx.cfg.model_copy(deep=True)
        previous = [str(p) for p in history_runs(ctx.cfg.workdir)[-2:]]
        with_history.report.compare = list(ctx.cfg.report.compare) + previous
        path = report_from_config(with_history)
        say("report:", "bold green", path)
