"""Atomic file output and input-protection checks.

Every file this package writes goes through :func:`atomic_write`: a temporary file
in the destination folder, fsync, then ``os.replace``. A crash leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block exits cleanly."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    with atomic_writer(path, mode=mode) as fh:
        fh.write(data)


def refuse_overwrite_of_input(
    output: str | os.PathLike[str], inputs: list[str | os.PathLike[str]]
) -> None:
    """Raise ``ValueError`` if ``output`` is one of ``inputs`` (an input is never overwritten)."""
    out = Path(output).resolve()
    for item in inputs:
        src = Path(item)
        if out == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
            raise ValueError(
                f"refusing to overwrite the input file {src}: choose another output path"
            )


def refuse_existing(path: str | os.PathLike[str], what: str) -> None:
    """Raise ``FileExistsError`` if ``path`` exists (key files: losing one loses access)."""
    if Path(path).exists():
        raise FileExistsError(
            f"{what} {path} already exists; refusing to replace it (move it away first)"
        )
