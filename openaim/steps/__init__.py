"""The steps of the pipeline graph, in run order: the one list `openaim run`, `openaim status` and
`openaim build-dataset` go through. Each step is one object in its own module (openaim/steps/<step>.py;
the protocol: openaim.steps.base.Step). Adding a step: write its module, add it here.
"""

from __future__ import annotations

from openaim.steps.base import Step
from openaim.steps.dedup import Dedup
from openaim.steps.download import Download
from openaim.steps.evaluate import Evaluate
from openaim.steps.extract import Extract
from openaim.steps.manifest import Manifest
from openaim.steps.report import Report
from openaim.steps.safety import Safety
from openaim.steps.score import Score
from openaim.steps.select import Select
from openaim.steps.train import Train
from openaim.steps.train_filter import TrainFilter

STEPS: tuple[Step, ...] = (
    Extract(), Download(), TrainFilter(), Score(), Dedup(), Safety(), Select(), Manifest(),
    Train(), Evaluate(), Report(),
)
