"""Errors the exporter raises on purpose; :mod:`streamer_export.cli` maps them to exit codes."""

from streamer.errors import ConfigError, ModelError


class ExportInputError(ConfigError):
    """The source, a flag or the output folder is unusable (exit code 2)."""


class ParityError(ModelError):
    """The exported graph disagrees with PyTorch or is not truly dynamic (exit code 1)."""
