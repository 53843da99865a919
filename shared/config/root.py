"""The whole openaim config: one YAML file with a section per stage."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.config.base import StrictModel
from shared.config.curation import CurationConfig
from shared.config.evaluation import EvaluationConfig, ReportConfig
from shared.config.training import TrainingConfig
from shared.config.web import WebConfig


class OpenAIMConfig(StrictModel):
    name: str = "demo"
    # Every artifact of a run lives under workdir (relative paths resolve against the current directory).
    workdir: Path = Path("runs/demo")
    web: WebConfig = Field(default_factory=WebConfig)
    curation: CurationConfig = Field(default_factory=CurationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    def expand_path(self, pattern: str) -> str:
        """A configured path with `{workdir}` / `{web_dir}` replaced by this run's folders, so a config
        can point at its own artifacts (the demo mixes in the mini web's clean set) under any workdir.
        Other braces (webdataset's "{00000..00009}") are left alone."""
        return pattern.replace("{workdir}", str(self.workdir)).replace("{web_dir}", str(self.web_dir))

    # Where each stage writes; one place so the stages agree.
    @property
    def web_dir(self) -> Path:
        return self.workdir / "web"

    @property
    def curation_dir(self) -> Path:
        return self.workdir / "curation"

    @property
    def training_dir(self) -> Path:
        return self.workdir / "training"

    @property
    def eval_dir(self) -> Path:
        return self.workdir / "eval"

    @property
    def report_dir(self) -> Path:
        return self.workdir / "report"
