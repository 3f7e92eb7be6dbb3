"""Every error the package raises for bad input or bad artefacts: each message names the field or file and the fix.

The CLI prints these as one line (``python -m desupcon``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint or log is unreadable, truncated or not a desupcon artefact."""


class StaleRunError(RuntimeError):
    """A cached run was trained with a different config, or from different inputs, than the one requested."""


class ArtefactWriteError(RuntimeError):
    """An artefact could not be written (disk full, no permission); the previous version is kept."""


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field and a valid choice."""


class DatasetUnavailableError(RuntimeError):
    """The dataset is not on disk and could not be downloaded, or its files cannot make a dataset."""


class DivergenceError(RuntimeError):
    """Training diverged (a non-finite or exploding loss, gradient, weight or feature); nothing bad was saved."""
