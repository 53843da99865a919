"""Typed configs for every stage, validated once at the edge (see `shared.config.loading`)."""

from shared.config.base import StrictModel
from shared.config.curation import CurationConfig
from shared.config.evaluation import EvaluationConfig, ReportConfig
from shared.config.loading import load_config
from shared.config.root import OpenAIMConfig
from shared.config.training import AIM_PRESETS, TrainingConfig
from shared.config.web import WebConfig

__all__ = [
    "AIM_PRESETS", "CurationConfig", "EvaluationConfig", "OpenAIMConfig", "ReportConfig", "StrictModel",
    "TrainingConfig", "WebConfig", "load_config",
]
