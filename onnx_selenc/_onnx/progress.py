"""Progress bars on stderr for long work (tqdm when installed, silent otherwise)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(
    items: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar on stderr when ``enabled``."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional (the `progress` extra)
            pass
        else:
            yield from tqdm(items, desc=desc, total=total, leave=False, unit="layer")
            return
    yield from items
