"""Errors that reach the user as one line and a distinct exit code."""

from __future__ import annotations


class GraphpruneError(Exception):
    """Base class: the message is shown as one line; `exit_code` is the process status."""

    exit_code = 2


class BadInput(GraphpruneError):
    """The model, plan, data or a command-line value cannot be used (exit 2)."""

    exit_code = 2


class VerificationFailed(GraphpruneError):
    """The pruned model does not match its oracle on onnxruntime (exit 1)."""

    exit_code = 1
