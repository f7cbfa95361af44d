"""Progress bars for every pass that takes more than a few seconds (caching, embedding, overlays).

One place decides how progress looks: a tqdm bar on stderr (stdout stays for data), updated at most
once a second so that logs of non-interactive runs stay short.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "image",
             enabled: bool = True) -> Iterator[T]:
    """``items`` with a progress bar (``desc``, ``total`` items of ``unit``); ``enabled=False`` yields them plainly."""
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    with tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=1.0, dynamic_ncols=True) as bar:
        yield from bar
