"""Errors that name the problem; the CLI turns each into one line and exit code 2."""

from __future__ import annotations


class VitEditError(Exception):
    """Base class of every user-facing error of the engine."""


class CheckpointError(VitEditError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


class IncompatibleBaseError(VitEditError):
    """A hypernetwork, patch or suite was made for another base model (fingerprint mismatch)."""


class InvalidInputError(VitEditError):
    """An image, label or tensor handed to the engine is unusable (shape, range, NaN...)."""


class PatchConflictError(VitEditError):
    """A patch does not apply: the weights it expects to replace are not the current ones."""
