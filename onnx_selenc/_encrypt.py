"""The encryption pipeline: graph walk -> importance -> selection -> masking -> sealing -> files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import _bundle, _seal
from ._digest import model_digest
from ._graph import ConvInventory, ConvWeight, UnsupportedConv, walk_conv_weights
from ._importance import DATA_FREE_SCORERS, score_kernels
from ._io import refuse_existing, refuse_overwrite_of_input
from ._keys import LevelKey, new_owner_key, write_key_file
from ._masking import MASKINGS, MaskedLayer, kernel_matrix, mask_layer
from ._modelio import external_files, load_model, save_model
from ._progress import progress
from ._selection import (
    ALLOCATIONS,
    Selection,
    allocate_balanced,
    allocate_uniform,
    check_fractions,
    filter_layers,
    select,
)
from ._tensors import read_array, weight_tensor, write_array
from .exceptions import SelencError, UnsupportedModel

# Data-driven scorers and allocators (calibration-based) plug in here: given the
# model, the chosen weights and their current values, return scores / kernel counts.
ScoreProvider = Callable[
    [onnx.ModelProto, Sequence[ConvWeight], Mapping[str, np.ndarray]], Mapping[str, np.ndarray]
]
CountProvider = Callable[
    [onnx.ModelProto, Sequence[ConvWeight], Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
    Mapping[str, int],
]


@dataclass(frozen=True)
class LayerReport:
    """What was encrypted in one weight tensor (kept private: it is not in the manifest)."""

    key: str
    n_kernels: int
    encrypted_kernels: int
    kernels_per_level: tuple[int, ...]


@dataclass(frozen=True)
class EncryptResult:
    """Outcome of :func:`encrypt`."""

    model_files: tuple[Path, ...]
    key_file: Path
    key_id: str
    levels: int
    encrypted_weights: int
    conv_weights: int
    layers: tuple[LayerReport, ...]
    unsupported: tuple[UnsupportedConv, ...]

    @property
    def fraction(self) -> float:
        return self.encrypted_weights / self.conv_weights if self.conv_weights else 0.0


@dataclass(frozen=True)
class EncryptedModel:
    """An encrypted model in memory, with its owner key (the output of the pipeline)."""

    model: onnx.ModelProto
    owner_key: LevelKey
    selection: Selection
    inventory: ConvInventory
    masked: tuple[MaskedLayer, ...]


def encrypt(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    key_file: str | os.PathLike[str],
    levels: int = 5,
    budget: float = 0.01,
    allocation: str = "balanced",
    importance: str = "magnitude",
    layers: Sequence[str] | None = None,
    level_fractions: Sequence[float] | None = None,
    level_order: str = "most-important-first",
    masking: str = "empirical",
    seed: int | None = None,
    passphrase: str | None = None,
    external_data: bool | None = None,
    show_progress: bool = False,
) -> EncryptResult:
    """Encrypt the most important conv kernels of an ONNX model into tiered levels.

    The output is a valid ONNX model that runs in plain ONNX Runtime with the
    selected kernels replaced by random values; it carries the sealed originals.
    ``key_file`` receives the owner (top-level) key; lower tiers come from
    :func:`onnx_selenc.export_key`.

    Args:
        model_path: the plain model (external data beside it is read).
        output_path: where the encrypted model goes (never the input).
        key_file: where the owner key goes; must not exist yet.
        levels: number of service levels M (level M restores the original).
        budget: with ``allocation="balanced"``, the fraction of *all* conv weights
            to encrypt; with ``"uniform"``, the kernel ratio in each chosen layer
            (the paper's setting: ``floor(n * ratio) + 1`` kernels per layer).
        allocation: ``"balanced"`` (data-free default) or ``"uniform"``.
        importance: kernel scorer: ``"magnitude"``, ``"abs-mean"`` or ``"random"``.
        layers: glob patterns on weight names / conv node names; default all convs.
        level_fractions: cumulative share of the encrypted kernels each level
            restores; default equal steps ``m/M``.
        level_order: ``"most-important-first"`` or ``"least-important-first"``.
        masking: ``"empirical"`` (default) or ``"gaussian"`` DPRM.
        seed: makes selection and masking reproducible (keys and nonces stay random).
        passphrase: protect the owner key file with scrypt.
        external_data: write weights to ``<output>.data``; default: as the input did.
        show_progress: progress bar on stderr.

    Returns:
        What was written and what was encrypted.

    Raises:
        UnsupportedModel: no conv weight can be encrypted.
        FormatError: the input is not a valid ONNX model.
        FileExistsError: ``key_file`` exists.
        ValueError: bad arguments, or an output path that is an input.

    Example:
        >>> result = encrypt("model.onnx", "model.enc.onnx", key_file="owner.key",
        ...                  levels=5, budget=0.01)  # doctest: +SKIP
    """
    model_path = Path(model_path)
    refuse_existing(key_file, "key file")
    model = load_model(model_path, load_external=False)
    inputs = [model_path, *external_files(model, model_path.parent)]
    refuse_overwrite_of_input(output_path, inputs)
    refuse_overwrite_of_input(key_file, inputs)
    if external_data is None:
        external_data = len(inputs) > 1
    model = load_model(model_path)
    enc = encrypt_model(
        model,
        levels=levels,
        budget=budget,
        allocation=allocation,
        importance=importance,
        layers=layers,
        level_fractions=level_fractions,
        level_order=level_order,
        masking=masking,
        seed=seed,
        show_progress=show_progress,
    )
    key_path = write_key_file(key_file, enc.owner_key, passphrase=passphrase)
    try:
        written = save_model(enc.model, output_path, external_data=external_data, protect=inputs)
    except BaseException:
        os.unlink(key_path)  # a key without its model is useless and blocks a retry
        raise
    return EncryptResult(
        model_files=tuple(written),
        key_file=key_path,
        key_id=enc.owner_key.key_id,
        levels=levels,
        encrypted_weights=enc.selection.selected_weights,
        conv_weights=enc.inventory.total_weights,
        layers=_layer_reports(enc.selection, enc.inventory, levels),
        unsupported=enc.inventory.unsupported,
    )


def encrypt_model(
    model: onnx.ModelProto,
    *,
    levels: int = 5,
    budget: float = 0.01,
    allocation: str = "balanced",
    importance: str = "magnitude",
    layers: Sequence[str] | None = None,
    level_fractions: Sequence[float] | None = None,
    level_order: str = "most-important-first",
    masking: str = "empirical",
    seed: int | None = None,
    scores: ScoreProvider | None = None,
    counts: CountProvider | None = None,
    owner_key: LevelKey | None = None,
    show_progress: bool = False,
) -> EncryptedModel:
    """In-memory core of :func:`encrypt` (the model must have its data loaded).

    ``scores``/``counts`` let data-driven importance and allocation replace the
    data-free ones; ``owner_key`` re-uses a key (tests, re-encryption).

    The model is modified in place and returned inside the result.
    """
    if _bundle.is_encrypted(model):
        raise SelencError("this model is already encrypted by onnx-selenc")
    fractions = check_fractions(levels, level_fractions)
    if allocation not in ALLOCATIONS and counts is None:
        raise ValueError(f"unknown allocation {allocation!r} (known: {', '.join(ALLOCATIONS)})")
    if scores is None and importance not in DATA_FREE_SCORERS:
        raise ValueError(
            f"importance {importance!r} needs calibration data or is unknown "
            f"(data-free: {', '.join(sorted(DATA_FREE_SCORERS))})"
        )
    if masking not in MASKINGS:
        raise ValueError(f"unknown masking {masking!r} (known: {', '.join(MASKINGS)})")
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")

    inventory = walk_conv_weights(model)
    if not inventory.weights:
        detail = "; ".join(f"{u.node}: {u.reason}" for u in inventory.unsupported)
        raise UnsupportedModel(
            "no encryptable conv weights found" + (f" ({detail})" if detail else "")
        )
    for u in inventory.unsupported:
        warnings.warn(f"skipping {u.node}: {u.reason}", stacklevel=2)
    chosen = filter_layers(inventory.weights, layers)
    arrays = {w.key: read_array(weight_tensor(model, w), None) for w in chosen}
    rng = np.random.default_rng(seed)

    if scores is not None:
        layer_scores = dict(scores(model, chosen, arrays))
    else:
        layer_scores = {
            key: score_kernels(kernel_matrix(a), importance, rng) for key, a in arrays.items()
        }
    if counts is not None:
        layer_counts = dict(counts(model, chosen, arrays, layer_scores))
    elif allocation == "uniform":
        layer_counts = allocate_uniform(chosen, budget)
    else:
        layer_counts = allocate_balanced(chosen, round(budget * inventory.total_weights))
    selection = select(
        layer_scores,
        layer_counts,
        levels=levels,
        fractions=fractions,
        order=level_order,
        total_weights=inventory.total_weights,
        kernel_sizes={w.key: w.kernel_size for w in chosen},
    )

    by_key = inventory.by_key()
    masked = []
    for layer in progress(selection.layers, desc="masking", enabled=show_progress):
        new_values, record = mask_layer(layer.key, arrays[layer.key], layer.kernels, rng, masking)
        write_array(weight_tensor(model, by_key[layer.key]), new_values)
        masked.append(record)

    owner = owner_key or new_owner_key(levels)
    if owner.level != levels or owner.levels != levels:
        raise ValueError("the owner key must be a top-level key for the same number of levels")
    payloads = [
        _bundle.encode_payload(_level_patches(selection, masked, by_key, m))
        for m in range(1, levels + 1)
    ]
    weights_per_level = [
        sum(
            int(np.count_nonzero(layer.restore_level == m)) * by_key[layer.key].kernel_size
            for layer in selection.layers
        )
        for m in range(1, levels + 1)
    ]
    lengths = [_seal.SEAL_OVERHEAD] + [len(p) + _seal.SEAL_OVERHEAD for p in payloads]
    manifest_raw = _bundle.manifest_bytes(
        {
            "key_id": owner.key_id,
            "levels": levels,
            "model_digest": model_digest(model, None, exclude_metadata=_bundle.BUNDLE_KEYS),
            "blobs": _bundle.blob_layout(lengths),
            "encrypted": {
                "weights": selection.selected_weights,
                "conv_weights": inventory.total_weights,
                "layers": len(selection.layers),
                "fraction": round(selection.fraction, 8),
            },
            "level_weights": [0, *np.cumsum(weights_per_level).tolist()],
            # The seed is deliberately absent: with the random scorer it would reveal
            # which kernels are encrypted.
            "selection": {
                "importance": importance,
                "allocation": allocation,
                "budget": budget,
                "masking": masking,
                "level_order": level_order,
                "level_fractions": list(fractions),
                "layers": list(layers or []),
            },
            "tool": f"onnx-selenc {_version()}",
        }
    )
    blobs = [_seal.seal(owner.level0(), b"", _bundle.blob_aad(manifest_raw, 0))]
    for m, payload in enumerate(payloads, start=1):
        blobs.append(
            _seal.seal(owner.derive(m).material, payload, _bundle.blob_aad(manifest_raw, m))
        )
    _bundle.attach(model, manifest_raw, blobs)
    return EncryptedModel(model, owner, selection, inventory, tuple(masked))


def _level_patches(
    selection: Selection,
    masked: Sequence[MaskedLayer],
    by_key: Mapping[str, ConvWeight],
    level: int,
) -> list[_bundle.TensorPatch]:
    patches = []
    for layer, record in zip(selection.layers, masked, strict=True):
        here = layer.restore_level == level
        if here.any():
            w = by_key[layer.key]
            patches.append(
                _bundle.TensorPatch(
                    layer.key, w.dtype, w.shape, record.kernels[here], record.originals[here]
                )
            )
    return patches


def _layer_reports(
    selection: Selection, inventory: ConvInventory, levels: int
) -> tuple[LayerReport, ...]:
    by_key = inventory.by_key()
    return tuple(
        LayerReport(
            layer.key,
            by_key[layer.key].n_kernels,
            len(layer.kernels),
            tuple(int(np.count_nonzero(layer.restore_level == m)) for m in range(1, levels + 1)),
        )
        for layer in selection.layers
    )


def _version() -> str:
    from . import __version__

    return __version__
