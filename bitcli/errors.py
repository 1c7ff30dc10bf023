"""Typed errors; each family carries its exit code. Every message is one line that names the thing
at fault and says what to do."""

from __future__ import annotations


class BitError(Exception):
    """Base class of every error bitcli raises on purpose."""

    exit_code = 1


class UsageError(BitError):
    """The command line or an option value is wrong."""

    exit_code = 2


class InputError(BitError):
    """One input (a path or an image) cannot be used; the batch goes on without it."""

    exit_code = 1

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ModelError(BitError):
    """The model could not be resolved, downloaded or loaded."""

    exit_code = 3


class ConfigError(ModelError):
    """A config file is missing, malformed or describes something bitcli cannot build."""


class CheckpointError(ModelError):
    """Weights are missing, corrupt, or do not fit the architecture."""


class ModelNotFoundError(ModelError):
    """The model reference names no local directory, alias or hub repository."""


class OfflineError(ModelError):
    """The model is not cached and the hub cannot (or may not) be reached."""
