"""Exceptions shared by every package: one base class, one subclass per boundary.

Messages say what was wrong, show the offending value and say how to fix it.
"""

from __future__ import annotations


class PtychoError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(PtychoError, ValueError):
    """A configuration value is invalid (raised at construction, before any work starts)."""


class DataContractError(PtychoError, ValueError):
    """A scan file or array violates the NPZ data contract."""


class ModelArchiveError(PtychoError, ValueError):
    """A ``wts.h5.zip`` archive or checkpoint cannot be read."""


class TrainingInterrupted(PtychoError):
    """Training stopped on a signal (SIGTERM, SIGUSR1, SIGINT) after writing a checkpoint to resume from.

    ``exit_code`` is the shell convention for a process ended by that signal (128 + signal number).
    """

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class ExportError(PtychoError):
    """Export failed, or the exported graphs disagree with the eager model."""


class InvalidInput(PtychoError, ValueError):
    """Inputs to reconstruct have the wrong names, dtypes or shapes, or an option is invalid."""


class InvalidValues(PtychoError, ValueError):
    """Inputs are well formed but cannot be reconstructed: NaN, inf, negative values, no signal."""


class BundleError(PtychoError, ValueError):
    """A deployment bundle is missing, tampered with, or from an unsupported version."""


class UnsupportedAPIError(PtychoError, ImportError):
    """A module of upstream PtychoPINN's ``ptycho_torch`` that this project deliberately does not provide."""
