"""Typed errors with one-line messages.

Every error the workbench raises for bad input or a missing resource derives from
`BiomedError`; the CLI prints `str(err)` on one line and exits non-zero, never a traceback.
Messages name the file (or item) and the reason.
"""

from __future__ import annotations


class BiomedError(Exception):
    """Base class: a one-line, user-facing error."""

    exit_code = 2

    def __str__(self) -> str:  # keep it to one line whatever the caller passed
        return " ".join(super().__str__().split())


class DataNotFetched(BiomedError):
    """A cached data item is missing: run `biomed data fetch`."""


class FetchError(BiomedError):
    """Fetching a registry package failed (no index, bad checksum, missing member)."""


class InputError(BiomedError):
    """A user-supplied file is malformed, truncated or of the wrong kind."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ConfigError(BiomedError):
    """A configuration value is invalid or inconsistent."""


class TrainingDiverged(BiomedError):
    """The training loss became NaN or infinite; the update was not applied."""
