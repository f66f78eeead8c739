"""Restoring: the sealed originals written back into the model's tensors, in memory."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto.digest import (
    PatchGate,
)
from onnx_selenc._onnx.graph import split_address
from onnx_selenc._onnx.original import drop_record
from onnx_selenc._onnx.stripped import StrippedModel
from onnx_selenc._onnx.tensors import (
    PLAIN_DTYPES,
    graph_constants,
    kernel_matrix,
    owning_graph,
    read_array,
    write_array,
)
from onnx_selenc.exceptions import FormatError, InvalidBundle

if TYPE_CHECKING:
    pass
from onnx_selenc._load.arguments import check_load_arguments
from onnx_selenc._load.handover import (
    _memory_candidates,
    mark_in_memory,
    refuse_file_references,
)
from onnx_selenc._load.opened import (
    _TAG_MISMATCH,
    KeySource,
    RestoredModel,
    _open,
    _Opened,
    _reads_files,
)
from onnx_selenc._load.wipe import wipe


def _group(
    payloads: Sequence[Sequence[_bundle.TensorPatch]],
) -> dict[str, list[_bundle.TensorPatch]]:
    by_address: dict[str, list[_bundle.TensorPatch]] = {}
    for patches in payloads:
        for p in patches:
            by_address.setdefault(p.address, []).append(p)
    return by_address


def _patched(
    model: onnx.ModelProto,
    payloads: Sequence[Sequence[_bundle.TensorPatch]],
    stripped: StrippedModel | None,
    gate: PatchGate | None = None,
) -> Iterator[tuple[tuple[str, ...], str, onnx.TensorProto, np.ndarray]]:
    """Each patched tensor with its restored values, checked to fit.

    The values are a fresh array, or, with a ``gate``, the stripped tensor's own bytes
    in the file buffer, restored in place (the gate keeps the digest right).
    """
    locate = _Locator(model)
    names: dict[np.dtype, str] = {}  # numpy's dtype.name is slow; hundreds of tensors
    spans = stripped.spans if gate is not None and stripped is not None else {}  # by id()
    for key, patches in _group(payloads).items():
        graph_path, name = split_address(key)
        tensor = locate(graph_path, name)
        values, owned = _values(tensor, stripped)
        dtype = values.dtype
        if dtype not in names:
            names[dtype] = dtype.name
        first = patches[0]
        if names[dtype] != first.dtype or values.shape != first.shape:
            raise InvalidBundle("sealed data does not fit the model's tensors")
        orders = [p.order for p in patches if p.order is not None]
        if orders:
            # Wired: the channels go back in order first (a fresh array, never in
            # place); the kernels of every level are sealed in that true order.
            if len(orders) > 1 or len(orders[0]) != values.shape[0]:
                raise InvalidBundle("sealed data does not fit the model's tensors")
            values, owned = values[orders[0]], True
            patches = [p for p in patches if p.order is None]
            if not patches:
                yield graph_path, name, tensor, values
                continue
        span = spans.get(id(tensor))
        in_place = span is not None and not owned and values.flags.writeable
        # A fresh array read from an external file is ours to patch: no second copy.
        restored = values if owned or in_place else np.array(values, copy=True)
        kernels = kernel_matrix(restored)
        indices = [p.kernels for p in patches if p.kernels.size]
        if indices:
            every = indices[0] if len(indices) == 1 else np.concatenate(indices)
            if every.min() < 0 or every.max() >= kernels.shape[0]:
                raise InvalidBundle("sealed data does not fit the model's tensors")
            if gate is not None and span is not None and in_place:
                gate.before_patch(span[0], kernels, every)
        for p in patches:
            kernels[p.kernels] = p.values
        yield graph_path, name, tensor, restored


def _values(tensor: onnx.TensorProto, stripped: StrippedModel | None) -> tuple[np.ndarray, bool]:
    """A tensor's current values, and whether the array is a fresh one nobody else holds.

    A stripped tensor (external data included, once read) gives a view of the buffer
    read from disk; any other the model's own bytes (read-only). Nothing is read from
    a file here: the bytes must be those the tag check covered.
    """
    if stripped is not None:
        view = stripped.array(tensor)
        if view is not None:
            return view, False
        raw = stripped.raw(tensor)
        if raw is not None:  # an odd size or dtype: let onnx read it as usual
            tensor.raw_data = bytes(raw)
    # What onnx's to_array reads from plain raw data, without its per-call dispatch
    # (tens of small restored tensors per load); anything else goes to it.
    dtype = PLAIN_DTYPES.get(tensor.data_type)
    if (
        dtype is not None
        and tensor.data_location != onnx.TensorProto.EXTERNAL
        and tensor.HasField("raw_data")
        and not tensor.HasField("segment")
    ):
        data, shape = tensor.raw_data, tuple(tensor.dims)
        if len(data) == math.prod(shape) * dtype.itemsize:
            return np.frombuffer(data, dtype=dtype).reshape(shape), False
    return read_array(tensor, None), False  # external here: FormatError, never a read


def _apply(
    model: onnx.ModelProto,
    payloads: Sequence[Sequence[_bundle.TensorPatch]],
    stripped: StrippedModel | None = None,
) -> None:
    """Write the sealed originals back into the model."""
    for _, _, tensor, restored in _patched(model, payloads, stripped):
        write_array(tensor, restored)


def _apply_apart(
    model: onnx.ModelProto,
    payloads: Sequence[Sequence[_bundle.TensorPatch]],
    stripped: StrippedModel,
    external: frozenset[int],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Write the originals back, keeping the main-graph weights that were external apart.

    Those (ids in ``external``) are marked as in memory; returned are the restored
    ones and the unchanged ones (views of the buffer). Everything else goes into the
    model: it stays under protobuf's limit however large the external data.
    """
    restored: dict[str, np.ndarray] = {}
    initializers = {id(t) for t in model.graph.initializer}
    for graph_path, name, tensor, values in _patched(model, payloads, stripped):
        if id(tensor) in external and not graph_path and id(tensor) in initializers:
            mark_in_memory(tensor, values.nbytes)
            restored[name] = values
        else:
            write_array(tensor, values)
    unchanged: dict[str, np.ndarray] = {}
    candidates = _memory_candidates(model)
    for tensor in stripped.tensors:
        if tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue  # restored above
        entry = candidates.get(id(tensor)) if id(tensor) in external else None
        view = stripped.array(tensor) if entry is not None else None
        if entry is not None and view is not None:
            mark_in_memory(tensor, view.nbytes)
            unchanged[entry[1]] = view
        else:
            raw = stripped.raw(tensor)
            assert raw is not None
            tensor.raw_data = bytes(raw)
    return restored, unchanged


class _Locator:
    """A patched tensor by ``(graph path, name)``, each graph indexed once.

    A scan per patched tensor is quadratic: PaddlePaddle exports hold hundreds of
    weights in Constant nodes. The index keeps :func:`_tensors.find_tensor`'s choice: the
    first initializer of that name, else the first Constant with a ``value`` that outputs
    it.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._graphs: dict[tuple[str, ...], dict[str, onnx.TensorProto] | None] = {}

    def __call__(self, graph_path: tuple[str, ...], name: str) -> onnx.TensorProto:
        if graph_path not in self._graphs:
            try:
                graph = owning_graph(self._model, graph_path)
            except FormatError:
                self._graphs[graph_path] = None
            else:
                self._graphs[graph_path] = graph_constants(graph)
        found = self._graphs[graph_path]
        tensor = None if found is None else found.get(name)
        if tensor is None:
            raise InvalidBundle("sealed data does not fit the model's tensors")
        return tensor


def restore_model(
    model_path: str | os.PathLike[str],
    *,
    key: KeySource,
    level: int | None = None,
    passphrase: str | None = None,
) -> RestoredModel:
    """Restore an encrypted model to a level, in memory.

    Args:
        model_path: the encrypted ``.onnx`` (or a packaged folder).
        key: key file path or :class:`LevelKey` (no default: the caller supplies it).
        level: level to restore; default: the key's own level.
        passphrase: for a passphrase-protected key file.

    Returns:
        The restored model; at the top level its weights equal the original's bit for bit.

    Raises:
        NotEncrypted: the model carries no onnx-selenc bundle.
        KeyMismatch: the key belongs to another encrypted model.
        LevelNotGranted: ``level`` is above the key's level.
        InvalidBundle: the model, its sealed data or the key failed authentication.
        FormatError, KeyFileError: malformed or truncated files.
        InvalidArgument: an argument of the wrong type or out of range (``level=-1``,
            ``level=1.9``, ``key={...}``).
    """
    check_load_arguments(model_path, key=key, level=level, passphrase=passphrase)
    return restore_opened(_open(model_path, key, level, passphrase))


def restore_opened(
    opened: _Opened, payloads: list[list[_bundle.TensorPatch]] | None = None
) -> RestoredModel:
    """:func:`restore_model` after :func:`_open` (``encrypt``'s self-check opens bytes;
    it has opened the ``payloads`` already)."""
    model = opened.stripped.model
    opened.read_external()  # the one read of the external data: all below uses it
    skeleton, sources = opened.digest_inputs()
    if not opened.matches(opened.model_tag(skeleton, sources, overlap=_reads_files(sources))):
        raise InvalidBundle(_TAG_MISMATCH)
    plain: list[bytearray] = []  # decrypted here: zeroed once copied into the model
    if payloads is None:
        payloads = opened.payloads(plain)
    _bundle.strip(model)
    drop_record(model)  # how the plain file was stored: decrypt's business, not the model's
    levels, key_id = opened.manifest.levels, opened.manifest.key_id
    if opened.files and not opened.inline:
        restored, unchanged = _apply_apart(model, payloads, opened.stripped, opened.external)
        wipe(plain)
        refuse_file_references(model, opened.tensors, skeleton)
        return RestoredModel(
            model, opened.target, levels, key_id, opened.path.parent, restored, unchanged
        )
    _apply(model, payloads, opened.stripped)
    wipe(plain)
    # Large tensors were parsed (or read) without their bytes: put back those not rewritten.
    opened.stripped.restore_raw_data(
        skip=frozenset(id(t) for t in opened.stripped.tensors if t.HasField("raw_data"))
    )
    refuse_file_references(model, opened.tensors, skeleton)
    return RestoredModel(model, opened.target, levels, key_id, None)
