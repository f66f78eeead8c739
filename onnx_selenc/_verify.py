"""Encrypt's self-check: the output is proven restorable before anything is written.

The check runs the real loader on the serialised output, in memory: the owner key
must restore every conv weight bit for bit, each level must open and restore exactly
its own kernels (none twice, none empty), every encrypted kernel must differ from its
original in the public model, and plain ONNX Runtime must build a session from it.
A failure is a bug in onnx-selenc, reported as :class:`SelfCheckFailed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ._graph import ConvWeight
from ._keys import LevelKey
from ._loader import open_bytes, restore_opened
from ._masking import MaskedLayer, kernel_matrix
from ._modelio import serialise_if_small
from ._selection import Selection
from ._tensors import read_array, weight_tensor
from .exceptions import SelencError, SelfCheckFailed


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
    originals: Mapping[str, np.ndarray],
) -> SelfCheck:
    """Prove that ``model`` (encrypted, data in memory) restores to ``originals``.

    Args:
        model: the encrypted model as it will be written.
        owner_key: its top-level key.
        selection: which kernels each level restores.
        masked: the originals and replacements of each selected layer.
        weights: every conv weight of the model, by key.
        originals: the original values of every selected weight, by key.

    Raises:
        SelfCheckFailed: the output would not restore; nothing may be written.
    """
    producer = f"{model.producer_name} {model.producer_version}".strip() or "unknown producer"

    def fail(what: str, key: str | None = None) -> SelfCheckFailed:
        where = f", tensor {key!r}" if key else ""
        return SelfCheckFailed(
            f"bug in onnx-selenc: the encrypted output failed its self-check ({what}{where}; "
            f"model from {producer}); nothing was written. Please report it with the "
            "model's producer and this message."
        )

    for layer, record in zip(selection.layers, masked, strict=True):
        same = np.all(record.replacements == record.originals, axis=1)
        if same.any():
            raise fail(f"{int(same.sum())} encrypted kernels equal their originals", layer.key)
    data = serialise_if_small(model)
    if data is None:
        # Past protobuf's limit no serialised copy can exist in memory: check the sealed
        # data against the model itself (the tag and session checks need the file).
        return _verify_large(model, owner_key, selection, weights, originals, fail)
    try:
        opened = open_bytes(data, owner_key, owner_key.level)
        payloads = opened.payloads()
        restored = restore_opened(opened).model
    except SelencError as exc:
        raise fail(f"the owner key does not restore it: {type(exc).__name__}: {exc}") from exc
    _check_levels(payloads, selection, fail)
    compared = 0
    for key, w in weights.items():
        values = read_array(weight_tensor(restored, w), None)
        expected = originals.get(key)
        if expected is None:
            expected = read_array(weight_tensor(model, w), None)  # not encrypted: unchanged
        if values.dtype != expected.dtype or values.tobytes() != expected.tobytes():
            raise fail("a restored weight differs from the original", key)
        compared += 1
    _check_public_session(data, fail)
    return SelfCheck(compared, len(payloads), True, data)


def _check_levels(payloads: Sequence[Sequence[object]], selection: Selection, fail: object) -> None:
    """Level m's sealed kernels are exactly those the selection gives it, and some."""
    assert callable(fail)
    if len(payloads) != selection.levels:
        raise fail(f"{len(payloads)} sealed levels for {selection.levels}")
    for m, patches in enumerate(payloads, start=1):
        got = {(p.key, int(k)) for p in patches for k in p.kernels}  # type: ignore[attr-defined]
        want = {
            (layer.key, int(k))
            for layer in selection.layers
            for k in layer.kernels[layer.restore_level == m]
        }
        if not want:
            raise fail(f"level {m} restores nothing more than level {m - 1}")
        if got != want:
            raise fail(f"level {m} seals {len(got)} kernels where {len(want)} were assigned")


def _check_public_session(data: bytes, fail: object) -> None:
    assert callable(fail)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Whether the model loads is the question, not how fast it runs: no optimisation
    # passes or weight prepacking (a quarter of the build time on a VGG19).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.add_session_config_entry("session.disable_prepacking", "1")
    try:
        ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own exception types
        raise fail(f"plain ONNX Runtime does not load the public model: {exc}") from exc


def _verify_large(
    model: onnx.ModelProto,
    owner_key: LevelKey,
    selection: Selection,
    weights: Mapping[str, ConvWeight],
    originals: Mapping[str, np.ndarray],
    fail: object,
) -> SelfCheck:
    """The self-check of a model over 2 GB: sealed originals against the model's tensors."""
    assert callable(fail)
    from . import _bundle, _seal
    from ._graph import split_key
    from ._loader import _Locator

    manifest, blobs = _bundle.read_bundle(model)
    keys = [owner_key.derive(m) for m in range(owner_key.level + 1)]
    _seal.open_sealed(keys[0].material, blobs[0], _bundle.blob_aad(manifest.raw, 0))
    payloads = [
        _bundle.decode_payload(
            _seal.open_sealed(keys[m].material, blobs[m], _bundle.blob_aad(manifest.raw, m))
        )
        for m in range(1, owner_key.level + 1)
    ]
    _check_levels(payloads, selection, fail)
    locate = _Locator(model)
    compared = 0
    for patches in payloads:
        for p in patches:
            path, name = split_key(p.key)
            public = kernel_matrix(read_array(locate(path, name), None))
            want = kernel_matrix(originals[p.key])
            if p.values.tobytes() != want[p.kernels].tobytes():
                raise fail("a sealed kernel differs from the original", p.key)
            if (public[p.kernels] == want[p.kernels]).all(axis=1).any():
                raise fail("an encrypted kernel equals its original", p.key)
            compared += 1
    del weights
    return SelfCheck(compared, len(payloads), False)
