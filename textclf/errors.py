"""Errors a user can act on.

Every exception raised for bad input derives from :class:`TextclfError`. Its message names the file,
line or field at fault and says what to do. The command line prints the message (no traceback) and
exits with status 2; the Python API lets it propagate.
"""


class TextclfError(Exception):
    """Base class for errors caused by the user's input, data or configuration."""


class DataError(TextclfError):
    """A data file, column, row or label is unusable."""


class ConfigError(TextclfError, ValueError):
    """A configuration field has an invalid value."""


class ModelLoadError(TextclfError):
    """A model name or folder cannot be loaded."""


class OutputDirError(TextclfError):
    """The output folder cannot be used as asked (e.g. it holds a different run)."""


class TrainingError(TextclfError):
    """Training cannot continue (non-finite loss, out of memory) and says which knob to turn."""


class DataWarning(UserWarning):
    """Data was usable but odd (rows dropped, conflicting duplicates, leakage between splits).

    Defined here rather than in ``data.readers`` (which re-exports it) so the command line can route these
    warnings without importing the readers, and torch with them, for commands that read no data."""
