"""Errors that reach the user as one line and a distinct exit code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class GraphpruneError(Exception):
    """Base class: the message is shown as one line; `exit_code` is the process status."""

    exit_code = 2


class BadInput(GraphpruneError):
    """The model, plan, data or a command-line value cannot be used (exit 2)."""

    exit_code = 2


class VerificationFailed(GraphpruneError):
    """The pruned model does not match its oracle on onnxruntime (exit 1)."""

    exit_code = 1


@contextmanager
def about(path: str | os.PathLike) -> Iterator[None]:
    """Bad input raised inside the block names the user's file `path` (onnxruntime's own
    errors inside the oracle speak of the session copy, which means nothing to the user)."""
    try:
        yield
    except BadInput as err:
        prefix = f"{path}: "
        message = str(err)
        if message.startswith(prefix):
            raise
        raise type(err)(prefix + message) from None
