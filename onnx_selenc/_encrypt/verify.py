"""Encrypt's self-check: the output is proven restorable before anything is written.

The check runs the real loader on the serialised output, in memory: the owner key
must restore every conv weight bit for bit, each level must open and restore exactly
its own kernels (none twice, none empty), every encrypted kernel must differ from its
original in the public model, and plain ONNX Runtime must build a session from it.
A failure is a bug in onnx-selenc, reported as :class:`SelfCheckFailed`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto.bundle import TensorPatch
from onnx_selenc._crypto.keys import LevelKey
from onnx_selenc._load.loader import _Locator, _open, _reads_files, open_bytes, restore_opened
from onnx_selenc._load.opened import unseal_levels
from onnx_selenc._onnx.graph import ConvWeight, split_address
from onnx_selenc._onnx.modelio import serialise_if_small
from onnx_selenc._onnx.tensors import read_array
from onnx_selenc._select.masking import MaskedLayer, kernel_matrix
from onnx_selenc._select.selection import Selection
from onnx_selenc.exceptions import SelencError, SelfCheckFailed

# Builds the SelfCheckFailed to raise: what failed, and the tensor if one.
Fail = Callable[..., SelfCheckFailed]


def _producer(model: onnx.ModelProto) -> str:
    return f"{model.producer_name} {model.producer_version}".strip() or "unknown producer"


def _failure(what_failed: str, producer: str) -> Fail:
    """The message of a self-check failure: a bug in onnx-selenc, nothing written."""

    def fail(what: str, key: str | None = None) -> SelfCheckFailed:
        where = f", tensor {key!r}" if key else ""
        return SelfCheckFailed(
            f"bug in onnx-selenc: {what_failed} failed its self-check ({what}{where}; "
            f"model from {producer}); nothing was written. Please report it with the "
            "model's producer and this message."
        )

    return fail


@dataclass(frozen=True)
class SelfCheck:
    """What the self-check covered (for the report and the benchmark)."""

    tensors_compared: int
    levels_checked: int
    public_session: bool
    # The model as checked, serialised (None past 2 GB): what encrypt writes.
    serialised: bytes | None = None


def verify_encrypted(
    model: onnx.ModelProto,
    owner_key: LevelKey,
    selection: Selection,
    masked: Sequence[MaskedLayer],
    weights: Mapping[str, ConvWeight],
    originals: Mapping[str, np.ndarray | bytes],
    plain: Path | None = None,
) -> SelfCheck:
    """Prove that ``model`` (encrypted, data in memory) restores to the original.

    Args:
        model: the encrypted model as it will be written.
        owner_key: its top-level key.
        selection: which kernels each level restores.
        masked: the originals and replacements of each selected layer.
        weights: every conv weight of the model, by key.
        originals: :func:`keep_originals` of the encrypted weights, taken before masking.
        plain: the plain model's file, if any (see :func:`_session_problem`).

    Raises:
        SelfCheckFailed: the output would not restore; nothing may be written.
    """
    fail = _failure("the encrypted output", _producer(model))
    for layer, record in zip(selection.layers, masked, strict=True):
        same = np.all(record.replacements == record.originals, axis=1)
        if same.any():
            raise fail(f"{int(same.sum())} encrypted kernels equal their originals", layer.address)
    data = serialise_if_small(model)
    if data is None:
        # Past protobuf's limit no serialised copy can exist in memory: check the sealed
        # data against the model itself (the tag and session checks need the file).
        return _verify_large(model, owner_key, selection, masked, originals, fail)
    # ONNX Runtime builds the public session on a worker while the restore runs here:
    # both spend most of their time outside the GIL (session init, AES, GMAC, memcmp).
    with ThreadPoolExecutor(1) as pool:
        session = pool.submit(_session_problem, data, plain)
        try:
            opened = open_bytes(data, owner_key, owner_key.level)
            payloads = opened.payloads()
            restored = restore_opened(opened, payloads).model
        except SelencError as exc:
            raise fail(f"the owner key does not restore it: {type(exc).__name__}: {exc}") from exc
        _check_levels(payloads, selection, fail, originals.keys() - weights.keys())
        compared = _compare(restored, model, weights, originals, fail)
        problem = session.result()
    _raise_or_warn(problem, fail)
    return SelfCheck(compared, len(payloads), True, data)


def _compare(
    restored: onnx.ModelProto,
    model: onnx.ModelProto,
    weights: Mapping[str, ConvWeight],
    originals: Mapping[str, np.ndarray | bytes],
    fail: Fail,
) -> int:
    """Every restored conv weight, and every other tensor with an original kept (a
    wired bias or BatchNormalization), is its original, bit for bit; returns how many."""
    in_restored, in_public = _Locator(restored), _Locator(model)
    for key, w in weights.items():
        values = read_array(in_restored(w.graph_path, w.name), None)
        original = originals.get(key)
        if original is None:  # not encrypted: the public values are the plain ones
            original = read_array(in_public(w.graph_path, w.name), None)
        if not _same(values, original):
            raise fail("a restored weight differs from the original", key)
    others = [key for key in originals if key not in weights]
    for key in others:
        if not _same(read_array(in_restored(*split_address(key)), None), originals[key]):
            raise fail("a restored tensor differs from the original", key)
    return len(weights) + len(others)


def _check_levels(
    payloads: Sequence[Sequence[TensorPatch]],
    selection: Selection,
    fail: Fail,
    others: Collection[str] = (),
) -> None:
    """Level m's sealed kernels are exactly those the selection gives it, and some;
    ``others`` (tensors outside the selection with originals kept: wired, or taken from
    a base) are sealed at level 1 only."""
    if len(payloads) != selection.levels:
        raise fail(f"{len(payloads)} sealed levels for {selection.levels}")
    for m, patches in enumerate(payloads, start=1):
        if m > 1 and any(p.order is not None or p.address in others for p in patches):
            raise fail(f"level {m} seals a channel order or a tensor only level 1 may")
        got = {
            p.address: np.sort(p.kernels)
            for p in patches
            if p.order is None and p.address not in others
        }
        want = {
            layer.address: np.sort(layer.kernels[layer.restore_level == m])
            for layer in selection.layers
            if (layer.restore_level == m).any()
        }
        if not want:
            raise fail(f"level {m} restores nothing more than level {m - 1}")
        if got.keys() != want.keys() or any(not np.array_equal(got[k], want[k]) for k in want):
            raise fail(f"level {m} does not seal exactly the kernels assigned to it")


def _raise_or_warn(problem: tuple[str, bool] | None, fail: Fail) -> None:
    if problem is None:
        return
    message, plain_fails_too = problem
    if plain_fails_too:
        warnings.warn(
            "ONNX Runtime does not load the plain model either, so the self-check did not "
            f"build a session of the encrypted one: {message}",
            stacklevel=4,
        )
        return
    raise fail(f"plain ONNX Runtime does not load the public model: {message}")


def _session_problem(data: bytes | str, plain: Path | None) -> tuple[str, bool] | None:
    """Why plain ONNX Runtime does not load the public model (and whether it does not
    load the plain one either), or None if it loads.

    A model ONNX Runtime cannot load as it is (custom operators from a library it was
    not given, an opset it does not know) is not made loadable by encrypting it: then
    the check is skipped with a warning instead of blaming onnx-selenc.
    """
    try:
        _session(data)
    except Exception as exc:  # ONNX Runtime's own exception types
        if plain is not None:
            try:
                _session(str(plain))
            except Exception as plain_exc:
                return str(plain_exc), True
        return str(exc), False
    return None


def _session(model: bytes | str) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Whether the model loads is the question, not how fast it runs: no optimisation
    # passes or weight prepacking (a quarter of the build time on a VGG19).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.add_session_config_entry("session.disable_prepacking", "1")
    ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _verify_large(
    model: onnx.ModelProto,
    owner_key: LevelKey,
    selection: Selection,
    masked: Sequence[MaskedLayer],
    originals: Mapping[str, np.ndarray | bytes],
    fail: Fail,
) -> SelfCheck:
    """The self-check of a model over 2 GB: sealed originals against the model's tensors."""
    from onnx_selenc._crypto import bundle as _bundle

    manifest, blobs = _bundle.read_bundle(model)
    keys = [owner_key.derive(m) for m in range(owner_key.level + 1)]
    _seal.open_sealed(keys[0].material, blobs[0], _bundle.blob_aad(manifest.raw, 0))
    payloads = unseal_levels(manifest, blobs, keys)
    records = {r.address: r for r in masked}
    _check_levels(payloads, selection, fail, originals.keys() - records.keys())
    locate = _Locator(model)
    orders = {p.address: p.order for patches in payloads for p in patches if p.order is not None}

    def true_order(address: str) -> np.ndarray:
        """The public values of a tensor with any wiring undone (a fresh array)."""
        values = read_array(locate(*split_address(address)), None)
        order = orders.get(address)
        return values.copy() if order is None else values[order]

    compared = 0
    taken: dict[str, list[TensorPatch]] = {}  # tensors a base gave level 0 (not masked)
    for patches in payloads:
        for p in patches:
            if p.order is not None:
                continue
            if p.address not in records:
                taken.setdefault(p.address, []).append(p)
                continue
            public = kernel_matrix(true_order(p.address))
            record = records[p.address]
            # Rows of the record that hold p's kernels (its kernels are distinct).
            by_kernel = np.argsort(record.kernels)
            rows = by_kernel[np.searchsorted(record.kernels, p.kernels, sorter=by_kernel)]
            want = record.originals[rows]
            if p.values.tobytes() != want.tobytes():
                raise fail("a sealed kernel differs from the original", p.address)
            if (public[p.kernels] == want).all(axis=1).any():
                raise fail("an encrypted kernel equals its original", p.address)
    # The model's tensors with every level's originals put back must be the plain ones.
    for key, record in records.items():
        values = true_order(key)
        kernel_matrix(values)[record.kernels] = record.originals
        if not _same(values, originals[key]):
            raise fail("a weight with its originals put back differs from the plain one", key)
        compared += 1
    for key in orders.keys() - records.keys():  # wired, not masked
        if not _same(true_order(key), originals[key]):
            raise fail("a wired tensor put back in order differs from the plain one", key)
        compared += 1
    for key, patches in taken.items():
        values = true_order(key)
        for p in patches:
            kernel_matrix(values)[p.kernels] = p.values
        if key not in originals or not _same(values, originals[key]):
            raise fail("a tensor taken from the base, put back, differs from the plain one", key)
        compared += 1
    return SelfCheck(compared, len(payloads), False)


# Below this many bytes of encrypted weights their arrays are kept for the self-check;
# above it (models near or past 2 GB) only a digest of each, to keep the peak down.
ORIGINALS_IN_MEMORY = 1 << 30


def keep_originals(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | bytes]:
    """What the self-check compares restored weights with: the arrays, or digests."""
    if sum(a.nbytes for a in arrays.values()) < ORIGINALS_IN_MEMORY:
        return dict(arrays)
    return {key: _digest(a) for key, a in arrays.items()}


def _digest(values: np.ndarray) -> bytes:
    head = values.dtype.str.encode() + repr(values.shape).encode()
    return _seal.checksum(head) + _seal.checksum(np.ascontiguousarray(values).data)


def _same(values: np.ndarray, original: np.ndarray | bytes) -> bool:
    """``values`` equal the original (or its :func:`_digest`) bit for bit."""
    if isinstance(original, bytes):
        return _digest(values) == original
    return values.dtype == original.dtype and values.tobytes() == original.tobytes()


def verify_written(
    model_path: Path, owner_key: LevelKey, *, public_session: bool, plain: Path | None = None
) -> None:
    """Check model files as written (temporary names) against the manifest's level-0 tag.

    The tag covers every byte the digest does, whether inline or external, so the
    files the loader will read are the model :func:`verify_encrypted` restored. Used
    where the written bytes are not the checked ones: external data, models over 2 GB.
    ``public_session``: also build a plain ONNX Runtime session from the files (the in-
    memory check could not, past 2 GB).
    """
    fail = _failure("the written encrypted model", "unknown producer")
    with ThreadPoolExecutor(1) as pool:
        # The session (past 2 GB: gigabytes to read) builds while the tag is computed.
        session = pool.submit(_session_problem, str(model_path), plain) if public_session else None
        try:
            opened = _open(model_path, owner_key.derive(0), 0, None)
            fail = _failure("the written encrypted model", _producer(opened.stripped.model))
            skeleton, sources = opened.digest_inputs()
            tag = opened.model_tag(skeleton, sources, overlap=_reads_files(sources))
        except SelencError as exc:
            raise fail(f"the files do not open: {type(exc).__name__}: {exc}") from exc
        if not opened.matches(tag):
            raise fail("the files differ from the model that was checked")
        if session is not None:
            _raise_or_warn(session.result(), fail)
