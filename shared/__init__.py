"""Code common to the three openaim stages: configs, the stage cache, atomic writes, the CLI, the mini web."""

__version__ = "0.1.0"
