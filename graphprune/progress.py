"""Progress bars for long steps, on stderr, shown only on a terminal and never with --quiet, so
that `--json` output on stdout stays one document and logs stay clean."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
_enabled = True


def enable(on: bool) -> None:
    global _enabled
    _enabled = on


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    shown = _enabled and sys.stderr.isatty()
    return iter(
        tqdm(
            items,
            desc=description,
            total=total,
            disable=not shown,
            leave=False,
            file=sys.stderr,
            unit="step",
        )
    )
