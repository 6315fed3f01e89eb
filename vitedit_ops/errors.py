"""Errors that name the problem; the CLI turns each into one line and its exit code.

Exit codes a scheduler can act on: 2 the input is bad (fix it, retrying will not help), 3 a
gate or verification refused (a person decides), 4 infrastructure failed (a store, server or
disk; retrying later may work).
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_INFRASTRUCTURE = 4


class VitEditError(Exception):
    """Base class of every user-facing error of the engine (bad input: exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class CheckpointError(VitEditError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


class IncompatibleBaseError(VitEditError):
    """A hypernetwork, patch or suite was made for another base model (fingerprint mismatch)."""


class InvalidInputError(VitEditError):
    """An image, label or tensor handed to the engine is unusable (shape, range, NaN...)."""


class PatchConflictError(VitEditError):
    """A patch does not apply: the weights it expects to replace are not the current ones."""


class RefusedError(VitEditError):
    """A gate or a verification said no (exit code 3): nothing is wrong with the command."""

    exit_code = EXIT_REFUSED


class InfrastructureError(VitEditError):
    """A store, server or disk failed or could not be reached (exit code 4): retry later."""

    exit_code = EXIT_INFRASTRUCTURE
