"""The whole openaim config: one YAML file with a section per stage."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator

from shared import fsio
from shared.config.base import StrictModel
from shared.config.curation import CurationConfig
from shared.config.evaluation import EvaluationConfig, ReportConfig
from shared.config.training import TrainingConfig
from shared.config.web import WebConfig
from shared.errors import ConfigError


class OpenAIMConfig(StrictModel):
    name: str = "demo"
    # Every artifact of a run lives under workdir (relative paths resolve against the current directory): a
    # local folder (a Path), or a URL of an object store (a str, "s3://bucket/run", read and written
    # through shared.fsio; curation's steps support it, see docs/scale.md).
    workdir: Path | str = Path("runs/demo")
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

    @field_validator("workdir", mode="before")
    @classmethod
    def _path_or_url(cls, value: str | os.PathLike) -> Path | str:
        """A URL stays text (pathlib would fold its "//"), without a trailing "/"; anything else a Path."""
        if fsio.is_url(value):
            return os.fspath(value).rstrip("/")
        return Path(value)

    # Where each stage writes; one place so the stages agree.
    @property
    def web_dir(self) -> Path:
        """The mini web's local folder: web.dir, else {workdir}/web (refused under a URL workdir)."""
        if self.web.dir is not None:
            return self.web.dir
        if isinstance(self.workdir, str):
            raise ConfigError(f"web.dir: the mini web is served from local disk and workdir {self.workdir} "
                              "is a URL: set web.dir to a local folder")
        return self.workdir / "web"

    @property
    def curation_dir(self) -> Path | str:
        """{workdir}/curation: a Path, or a URL under a URL workdir (read it through shared.fsio)."""
        return fsio.join(self.workdir, "curation") if isinstance(self.workdir, str) else \
            self.workdir / "curation"

    def _local_workdir(self, stage: str) -> Path:
        """The workdir of a stage whose own folder is local (training's metrics and final/, eval's and the
        report's files): one clear error under a URL workdir."""
        if isinstance(self.workdir, str):
            raise ConfigError(f"workdir {self.workdir}: {stage} keeps its folder on local disk; run it with "
                              "a local workdir (training.checkpoint_root may be a URL)")
        return self.workdir

    @property
    def training_dir(self) -> Path:
        return self._local_workdir("training") / "training"

    @property
    def eval_dir(self) -> Path:
        return self._local_workdir("eval") / "eval"

    @property
    def report_dir(self) -> Path:
        return self._local_workdir("the report") / "report"
