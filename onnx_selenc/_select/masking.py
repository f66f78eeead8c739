"""DPRM: distribution-preserving random values for the selected kernels.

A selected kernel ``w`` becomes a fresh draw ``w'`` that matches the layer's
statistics at each kernel position and carries no information about ``w``: the
originals are not transformed, they are replaced, so decryption needs the sealed
originals themselves (like a one-time pad).

``gaussian`` draws ``mu_p + sigma_p * eps`` (the paper). ``empirical`` (default)
draws from the layer's own distribution at each position, taken from the kernels
that stay public, smoothed with a small Gaussian kernel so no value is an exact
copy of another weight, then rescaled to the exact per-position mean and spread.
Real weights have heavier tails than a Gaussian, so this is harder to tell apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_selenc._onnx.graph import ConvWeight, UnsupportedConv
from onnx_selenc._onnx.progress import progress
from onnx_selenc._onnx.tensors import kernel_matrix, weight_tensor, write_array
from onnx_selenc._select.selection import Selection
from onnx_selenc.exceptions import UnsupportedModel

MASKINGS = ("empirical", "gaussian")
__all__ = ["MASKINGS", "MaskedLayer", "UnmaskableLayer", "dprm_values", "kernel_matrix",
           "mask_layer", "mask_selection", "unmaskable_weights"]  # fmt: skip


@dataclass(frozen=True)
class MaskedLayer:
    """One layer's selected kernels: their originals and their replacements.

    Both arrays are ``(n_selected, kernel_size)`` in the weight's own dtype.
    """

    address: str
    kernels: np.ndarray
    originals: np.ndarray
    replacements: np.ndarray


def dprm_values(
    kernels: np.ndarray,
    selected: np.ndarray,
    rng: np.random.Generator,
    method: str = "empirical",
) -> np.ndarray:
    """Draw replacement values for the ``selected`` rows of ``kernels``.

    Args:
        kernels: ``(n_kernels, kernel_size)`` values of one layer.
        selected: indices of the rows to replace.
        rng: source of randomness.
        method: ``"empirical"`` or ``"gaussian"``.

    Returns:
        ``(len(selected), kernel_size)`` values in ``kernels.dtype``.

    Raises:
        ValueError: unknown method.
    """
    if method not in MASKINGS:
        raise ValueError(f"unknown masking {method!r} (known: {', '.join(MASKINGS)})")
    n, width = kernels.shape
    n_sel = len(selected)
    # One pass over the layer for the per-position moments; the selected rows' share is
    # taken out again to get the public kernels' (no copy of the layer is made).
    count, total, squares, shift = _moments(kernels)
    mu, sigma = _mean_std(count, total, squares)
    # Where every kernel shares one value at a position (pruned or constant weights) a
    # draw from the position's own spread is that value: use the whole layer's spread.
    # (mu is relative to shift, the rough per-position mean: add it back for the spread
    # across positions, all a single-kernel layer has.)
    layer_sigma = float(np.sqrt(np.mean(sigma**2) + np.var(shift + mu)))
    n_pub = count - n_sel
    if method == "gaussian" or n_pub < 2:
        # With fewer than two public kernels there is no empirical distribution to draw
        # from; only the layer's per-position mean and std are used (no single weight).
        sigma = np.where(sigma > 0, sigma, layer_sigma)
        draw = shift + mu + sigma * rng.standard_normal((n_sel, width))
    else:
        chosen = kernels[selected].astype(np.float64) - shift
        p_mu, p_sigma = _mean_std(
            n_pub, total - chosen.sum(axis=0), squares - np.einsum("ij,ij->j", chosen, chosen)
        )
        public = np.ones(n, dtype=bool)
        public[selected] = False
        public_rows = np.flatnonzero(public)
        rows = public_rows[rng.integers(0, n_pub, size=(n_sel, width))]
        picked = kernels[rows, np.arange(width)].astype(np.float64) - shift
        # Silverman's bandwidth: jitter hides exact copies, then rescale to keep spread.
        h = 1.06 * p_sigma * n_pub ** (-0.2)
        smoothed = picked + h * rng.standard_normal((n_sel, width))
        scale = np.divide(
            p_sigma, np.sqrt(p_sigma**2 + h**2), where=p_sigma > 0, out=np.ones_like(p_sigma)
        )
        draw = shift + p_mu + (smoothed - p_mu) * scale
        flat = p_sigma == 0
        if flat.any():
            draw[:, flat] += layer_sigma * rng.standard_normal((n_sel, int(flat.sum())))
    values = _to_dtype(draw, kernels.dtype)
    return _differ(values, kernels[selected], layer_sigma, rng)


def _differ(
    values: np.ndarray, originals: np.ndarray, spread: float, rng: np.random.Generator
) -> np.ndarray:
    """Make every replacement row differ from its original in at least one position.

    A draw can round back to the original (int8 weights with a small spread, float16):
    such a kernel would be "encrypted" and unchanged. One random position of each such
    row moves by the layer's spread (at least one step of the dtype), inside its range.
    """
    same = np.flatnonzero(np.all(values == originals, axis=1))
    if not same.size:
        return values
    if spread == 0:
        raise UnmaskableLayer("every weight of the weight tensor has the same value")
    pos = rng.integers(0, values.shape[1], size=same.size)
    base = originals[same, pos].astype(np.float64)
    sign = np.where(rng.random(same.size) < 0.5, -1.0, 1.0)
    if np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(values.dtype)
        step = max(1.0, round(spread))
        moved = base + sign * step
        moved = np.where((moved < info.min) | (moved > info.max), base - sign * step, moved)
    else:
        moved = base + sign * spread
    values = values.copy()
    values[same, pos] = _to_dtype(moved, values.dtype)
    # float16 can still round a tiny spread back: step to the next representable value.
    still = values[same, pos] == originals[same, pos]
    if still.any() and not np.issubdtype(values.dtype, np.integer):
        idx = (same[still], pos[still])
        values[idx] = np.nextafter(originals[idx], np.inf * sign[still]).astype(values.dtype)
    return values


class UnmaskableLayer(ValueError):
    """No replacement can differ from the original without leaving the layer's range."""


_MOMENT_ROWS = 1 << 14  # rows per chunk: float64 temporaries stay small


def _moments(kernels: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Count, per-position sum and sum of squares of ``kernels - shift``, and ``shift``.

    Shifting by a rough mean first keeps the sum of squares free of cancellation.
    Chunks of rows bound the float64 temporaries (a loop over chunks, not weights).
    """
    shift = kernels[:_MOMENT_ROWS].mean(axis=0, dtype=np.float64)
    total = np.zeros(kernels.shape[1])
    squares = np.zeros(kernels.shape[1])
    for start in range(0, kernels.shape[0], _MOMENT_ROWS):
        chunk = kernels[start : start + _MOMENT_ROWS].astype(np.float64) - shift
        total += chunk.sum(axis=0)
        squares += np.einsum("ij,ij->j", chunk, chunk)
    return kernels.shape[0], total, squares, shift


def _mean_std(count: int, total: np.ndarray, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def mask_layer(
    address: str,
    weight: np.ndarray,
    selected: np.ndarray,
    rng: np.random.Generator,
    method: str = "empirical",
) -> tuple[np.ndarray, MaskedLayer]:
    """Return the masked copy of ``weight`` and the record of what was replaced."""
    kernels = kernel_matrix(weight)
    replacements = dprm_values(kernels, selected, rng, method)
    originals = kernels[selected].copy()
    masked = kernels.copy()
    masked[selected] = replacements
    return masked.reshape(weight.shape), MaskedLayer(address, selected, originals, replacements)


def unmaskable_weights(
    chosen: Sequence[ConvWeight], arrays: Mapping[str, np.ndarray]
) -> tuple[list[ConvWeight], list[UnsupportedConv]]:
    """Leave out weights whose values are all equal: no random replacement of such a
    kernel can both differ from the original and keep the layer's distribution."""
    kept, dropped = [], []
    for w in chosen:
        a = arrays[w.address]
        if a.size and bool(np.all(a == a.flat[0])):
            dropped.append(
                UnsupportedConv(
                    ", ".join(w.consumers),
                    w.graph_path,
                    f"every value of weight '{w.name}' is {a.flat[0]!r}: a replacement would "
                    "equal the original or stand out, so it is not encrypted",
                )
            )
        else:
            kept.append(w)
    return kept, dropped


def mask_selection(
    model: onnx.ModelProto,
    selection: Selection,
    arrays: Mapping[str, np.ndarray],
    by_address: Mapping[str, ConvWeight],
    rng: np.random.Generator,
    masking: str,
    show_progress: bool,
) -> list[MaskedLayer]:
    """Replace the selected kernels in ``model`` by DPRM draws; return what was replaced."""
    masked = []
    for layer in progress(selection.layers, desc="masking", enabled=show_progress):
        try:
            new_values, record = mask_layer(
                layer.address, arrays[layer.address], layer.kernels, rng, masking
            )
        except UnmaskableLayer as exc:  # all-equal weights are left out above: say which
            raise UnsupportedModel(f"weight {layer.address!r} cannot be masked: {exc}") from None
        write_array(weight_tensor(model, by_address[layer.address]), new_values)
        masked.append(record)
    return masked
