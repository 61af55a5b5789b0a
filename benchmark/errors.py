"""Errors a user can act on. Each carries the process exit code the CLI uses (architecture.md §9)."""
from __future__ import annotations


class BenchmarkError(Exception):
    """Base class: a failure the suite explains in one message."""

    exit_code = 1


class UserInputError(BenchmarkError):
    """Bad input from the user (unknown name, bad setting, missing file): exit code 2."""

    exit_code = 2


class ConfigError(UserInputError):
    """An unknown or ill-typed setting."""


class DataUnavailableError(UserInputError):
    """No source (explicit path, cache, download) could provide a dataset's raw files."""


class DataFormatError(UserInputError):
    """A raw file exists but is corrupt or not in the expected layout; names the file and line."""

    def __init__(self, path, message: str, line: int | None = None):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
