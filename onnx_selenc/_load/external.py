"""External data read once into private memory, where the loader checks and uses it.

A file can change between two reads (another process writing or renaming it, a network
or FUSE mount that answers differently): a tag check over one read and a session built
from another would run bytes nobody checked. So every external tensor's bytes are read
once into one private buffer (``readinto``, never a memory map, whose pages would show
later writes to the file), after the model's own bytes, and become stripped tensors of
the model (``_onnx/stripped``): the tag is computed over that buffer, restored kernels
are written into it, and ONNX Runtime gets views of it or bytes copied from it.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_selenc._crypto.digest import ExternalData, _resolve_external
from onnx_selenc._onnx.stripped import Span, StrippedModel
from onnx_selenc.exceptions import FormatError


def read_external(
    stripped: StrippedModel, base_dir: Path, tensors: Sequence[onnx.TensorProto]
) -> list[onnx.TensorProto]:
    """Read the data of every external tensor among ``tensors`` into ``stripped``'s buffer.

    Each file is opened once and read in offset order (tensors back to back in the
    file are one read); the tensors then are stripped tensors over the new buffer,
    with their digest unchanged (see :meth:`StrippedModel.adopt`).

    Args:
        stripped: the model as read; its buffer is replaced by a larger one.
        base_dir: the model's folder.
        tensors: ``iter_tensors`` of the model (what the digest covers).

    Returns:
        The tensors read (no longer external).

    Raises:
        FormatError: a location outside the folder, missing or out of range (as the
            digest words it), data truncated while read, or tensors that together ask
            for more bytes than their files hold.
    """
    located = [
        (t, _resolve_external(t, base_dir))
        for t in tensors
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if not located:
        return []
    _refuse_overlaps(located)
    # Laid out in file order, so that tensors back to back in a file are one read.
    places = [(str(e.path), e.offset, i) for i, (_, e) in enumerate(located)]
    order = [i for _, _, i in sorted(places)]
    start = len(stripped.data)
    buffer = np.empty(start + sum(e.length for _, e in located), dtype=np.uint8)
    buffer[:start] = np.frombuffer(stripped.data, dtype=np.uint8)
    spans: list[Span] = [(0, 0)] * len(located)
    runs: list[_Run] = []
    pos = start
    for i in order:
        ext = located[i][1]
        spans[i] = (pos, pos + ext.length)
        last = runs[-1] if runs else None
        if last is not None and last.path == ext.path and last.offset + last.length == ext.offset:
            last.length += ext.length
        else:
            runs.append(_Run(ext.name, ext.path, ext.offset, pos, ext.length))
        pos += ext.length
    view = buffer.data
    for path, group in itertools.groupby(runs, key=lambda r: r.path):
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below)
        except OSError:
            raise FormatError(f"external data file {path} is missing") from None
        with fh:
            for run in group:
                _read_run(fh, view[run.start : run.start + run.length], run)
    stripped.adopt(view, [(t, span) for (t, _), span in zip(located, spans, strict=True)])
    return [t for t, _ in located]


@dataclass
class _Run:
    """``length`` bytes from ``offset`` of ``path`` into the buffer at ``start``, in one
    ``readinto`` (``name``: the first tensor's, for messages)."""

    name: str
    path: Path
    offset: int
    start: int
    length: int


def _read_run(fh: io.RawIOBase, into: memoryview, run: _Run) -> None:
    fh.seek(run.offset)
    got = 0
    while got < len(into):
        n = fh.readinto(into[got:])
        if not n:
            raise FormatError(f"external data of '{run.name}' is truncated")
        got += n


def _refuse_overlaps(located: Sequence[tuple[onnx.TensorProto, ExternalData]]) -> None:
    """Tensors may share bytes, but not ask for more than their files hold.

    The buffer holds each tensor's bytes apart; without this bound a tampered model
    (refused only once its tag is checked, after the read) could ask for many times
    its files' size by pointing many tensors at the same range.
    """
    sizes: dict[Path, int] = {}
    wanted: dict[Path, int] = {}
    for _, ext in located:
        if ext.path not in sizes:
            try:
                sizes[ext.path] = ext.path.stat().st_size
            except OSError:
                raise FormatError(f"external data file {ext.path} is missing") from None
        wanted[ext.path] = wanted.get(ext.path, 0) + ext.length
    for path, total in wanted.items():
        if total > sizes[path]:
            raise FormatError(
                f"the external tensors in {path.name} ask for {total} bytes of a "
                f"{sizes[path]}-byte file (they overlap)"
            )
