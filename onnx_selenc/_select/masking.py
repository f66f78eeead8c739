"""DPRM: distribution-preserving random values for the selected kernels.

A selected kernel ``w`` becomes a fresh draw ``w'`` that matches the layer's
statistics and carries no information about ``w``: the originals are not transformed,
they are replaced, so decryption needs the sealed originals themselves (like a
one-time pad).

``gaussian`` draws ``mu_p + sigma_p * eps`` at each position apart (the paper).
``empirical`` (default) draws whole kernels from the joint distribution of the kernels
that stay public (issue 25.1: real kernels correlate across positions and share their
filter's scale, and a per-layer covariance test found kernels drawn position by
position): a smoothed bootstrap of a public donor kernel, most often of the same
output filter, with full-covariance noise, keeping the public mean and covariance and
the layer's heavy tails (:func:`_joint`).

Either way the draws then take the layer's numeric form, so that the stored bits do
not point at them (``value_grid``, ``replacements``):

- **Grid.** If every weight of the layer is a bfloat16 or float16 value, or an
  integer multiple of a per-tensor or per-output-channel step (fake-quantised int8,
  up to 16-bit levels per tensor, 12-bit per channel), so is every replacement, bit
  for bit the value the layer stores for that step; quantised draws stay inside the
  layer's levels.
- **Zeros.** A replacement takes the zero pattern of its public donor kernel, so exact
  zeros appear as in the public kernels, with their spread of zero counts per kernel;
  nonzero draws never fall in the gap a pruning threshold leaves.
- **Exact copies.** Values recur at a position as often as the public ones do in the
  masked layer: on a coarse grid most do, in float32 a few, in float64 none (the
  smoothing would otherwise make replacements recur more or less often).

What the public can learn from the values: the layer's grid and its public kernels'
statistics (the replacements are drawn from them). What it cannot: which kernels were
replaced, from zero counts, mantissa bits or exact copies (tested at chance on
bf16, fp16 and 50%-pruned copies of a real model), nor from the kernels' shape (a
full-vs-diagonal covariance ratio, Mahalanobis and nearest-neighbour distances and the
norm's rank in its filter stay at or below 0.60 AUC on float32, fp16, bf16 and pruned
copies of real models, ``samples.paper.kernel_detectors``). Not covered: a per-channel grid
with fewer than 8 weights per channel (drawn as full precision); a layer with no
public kernel left, whose zeros are drawn per position at the whole layer's rate; and
a layer whose every grid value is taken (say 16 weights holding 0..15), where no
replacement can be a value no other weight holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_selenc._onnx.graph import ConvWeight, UnsupportedConv
from onnx_selenc._onnx.progress import progress
from onnx_selenc._onnx.tensors import kernel_matrix, weight_tensor, write_array
from onnx_selenc._select.base import replacements_from_base
from onnx_selenc._select.replacements import (
    _fit,
    _match_copies,
    _mend_off_grid,
    _next_value,
    _random_zeros,
)
from onnx_selenc._select.selection import Selection
from onnx_selenc._select.smoothing import SPARSE, bandwidth, pattern_draws
from onnx_selenc._select.value_grid import ValueGrid, find_grid
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
    *,
    axes: tuple[int, int] | None = None,
) -> np.ndarray:
    """Draw replacement values for the ``selected`` rows of ``kernels``.

    Args:
        kernels: ``(n_kernels, kernel_size)`` values of one layer.
        selected: indices of the rows to replace.
        rng: source of randomness.
        method: ``"empirical"`` or ``"gaussian"``.
        axes: the weight's first two dimensions, where a per-channel quantisation
            scale is looked for (:func:`value_grid.find_grid`); None: per-tensor only.

    Returns:
        ``(len(selected), kernel_size)`` values in ``kernels.dtype``, on the layer's
        value grid, with exact zeros at the layer's rate.

    Raises:
        ValueError: unknown method.
    """
    if method not in MASKINGS:
        raise ValueError(f"unknown masking {method!r} (known: {', '.join(MASKINGS)})")
    n, width = kernels.shape
    n_sel = len(selected)
    grid = find_grid(kernels, axes)
    # One pass over the layer for the per-position moments of its nonzero values (zeros
    # are drawn apart, below); the selected rows' share is taken out again to get the
    # public kernels' (no copy of the layer is made).
    layer = _moments(kernels)
    mu, sigma = _mean_std(layer.count, layer.total, layer.squares)
    layer_sigma = _layer_spread(layer, mu, sigma)
    public = np.ones(n, dtype=bool)  # a mask, not setdiff1d: that sorts all n rows
    public[selected] = False
    public_rows = np.flatnonzero(public)
    n_pub = len(public_rows)
    zeros: np.ndarray | None
    if method == "gaussian" or n_pub < 2:
        # With fewer than two public kernels there is no empirical distribution to draw
        # from; only the layer's per-position mean and std are used (no single weight).
        sigma = np.where(sigma > 0, sigma, layer_sigma)
        draw = layer.shift + mu + sigma * rng.standard_normal((n_sel, width))
        zeros = _random_zeros(1.0 - layer.count / n, n_sel, rng)
    else:
        draw, zeros = _joint(kernels, selected, public, public_rows, layer, axes, rng)
    draw = _fit(draw, selected, grid, layer.gap)
    if zeros is not None:
        draw[zeros] = 0.0
    values = _to_dtype(draw, kernels.dtype)
    if grid.coarse and n_pub:
        values = _mend_off_grid(values, kernels, selected, public_rows, layer.count, grid, rng)
    if n_pub >= 2 and np.issubdtype(kernels.dtype, np.floating):
        values = _match_copies(values, kernels, selected, public_rows, grid, rng)
    return _differ(values, kernels[selected], selected, layer_sigma, grid, layer.gap, rng)


def _layer_spread(layer: _Moments, mu: np.ndarray, sigma: np.ndarray) -> float:
    """The spread of the whole layer's nonzero values, within and across positions.

    Where every kernel shares one value at a position (pruned or constant weights) a
    draw from the position's own spread is that value: this one is used instead.
    """
    # mu is relative to shift, the rough per-position mean: add it back for the spread
    # across positions, all a single-kernel layer has. All-zero positions do not count.
    live = layer.count > 0
    if not live.any():
        return 0.0
    return float(np.sqrt(np.mean(sigma[live] ** 2) + np.var((layer.shift + mu)[live])))


_IN_FILTER = 0.7  # share of donors from the replaced kernel's own filter (see _joint)
_FILTER_TRIES = 8  # rounds of drawing a donor in the replaced kernel's own filter


def _joint(
    kernels: np.ndarray,
    selected: np.ndarray,
    public: np.ndarray,
    public_rows: np.ndarray,
    layer: _Moments,
    axes: tuple[int, int] | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Whole replacement kernels with the public kernels' joint structure over positions.

    Each replacement starts from a donor: a random public kernel, of the same output
    filter for ``_IN_FILTER`` of them (times the squared share of nonzero weights: see
    below) (a filter's kernels share a scale: the norm's rank in the filter stays
    uniform), of the whole layer for the rest (the selected kernels
    crowd into large filters: donors from those alone would raise the layer-wide
    Mahalanobis distances). It keeps ``sqrt(1 - h**2)`` of the donor's deviation from the
    public mean and adds ``h`` times full-covariance Gaussian noise scaled to the donor's
    own Mahalanobis radius: the public mean and covariance are kept, a heavy-tailed layer
    stays heavy-tailed, and with Silverman's bandwidth ``h`` a replacement lies about as
    far from its donor as kernels lie from their neighbours. Positions where the donor
    is zero stay zero (its whole zero pattern). In a sparse layer a donor whose zero
    pattern enough public kernels share is smoothed within that pattern instead
    (:func:`smoothing.pattern_draws`).

    Returns:
        The draws and where they are zero.
    """
    n_sel, width = len(selected), kernels.shape[1]
    mean, cov = _public_moments(kernels, selected, layer, len(public_rows))
    # In a pruned layer a kernel's zero count follows its filter's scale, and zero counts
    # are read layer-wide (issue 13.3): fewer donors come from the own filter there.
    live = float(layer.count.sum()) / max(kernels.size, 1)
    donors = _filter_donors(selected, public, public_rows, axes, _IN_FILTER * live**2, rng)
    donor = kernels[donors]
    deviation = donor.astype(np.float64) - mean
    # Eigenvectors, not Cholesky: fewer public kernels than positions, or a constant
    # position, make the covariance singular; the radius is taken in the directions it spans.
    lam, vec = np.linalg.eigh(cov)
    lam = np.maximum(lam, 0.0)
    spans = lam > 1e-12 * max(float(lam.max()), 1e-300)
    white = deviation @ (vec[:, spans] / np.sqrt(lam[spans]))
    radius = np.sqrt(np.mean(white * white, axis=1, keepdims=True)) if spans.any() else 0.0
    noise = (rng.standard_normal((n_sel, width)) @ (vec * np.sqrt(lam)).T) * radius
    # Noise on a pruned kernel's few nonzero values would drown their joint structure
    # (the covariance is diluted by zeros), too little leaves it near its donor: it
    # shrinks with the eighth root of the layer's share of nonzeros (0.92 at half).
    share = float(bandwidth(len(public_rows), int(spans.sum()))) * live**0.125
    draw = mean + np.sqrt(1.0 - share**2) * deviation + share * noise
    if live < SPARSE:
        pattern_draws(draw, kernels, donors, public_rows, rng)
    return draw, donor == 0


def _filter_donors(
    selected: np.ndarray,
    public: np.ndarray,
    public_rows: np.ndarray,
    axes: tuple[int, int] | None,
    in_filter: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A public kernel of the selected kernel's output filter for a share ``in_filter``
    of them (a few vectorised rounds of drawing), else of the layer."""
    donors = public_rows[rng.integers(0, len(public_rows), size=len(selected))]
    if axes is None or axes[1] < 2 or axes[0] * axes[1] != len(public):
        return donors
    first = (selected // axes[1]) * axes[1]
    todo = np.flatnonzero(rng.random(len(selected)) < in_filter)
    for _ in range(_FILTER_TRIES):
        pick = first[todo] + rng.integers(0, axes[1], size=todo.size)
        ok = public[pick]
        donors[todo[ok]] = pick[ok]
        todo = todo[~ok]
        if not todo.size:
            break
    return donors


def _public_moments(
    kernels: np.ndarray, selected: np.ndarray, layer: _Moments, n_pub: int
) -> tuple[np.ndarray, np.ndarray]:
    """The public kernels' mean and covariance, zeros included: the layer's sums less
    the selected rows'."""
    chosen = kernels[selected].astype(np.float64) - layer.shift
    total = layer.full_total - chosen.sum(axis=0)
    cross = layer.cross - chosen.T @ chosen
    centre = total / n_pub
    cov = cross / n_pub - np.outer(centre, centre)
    return layer.shift + centre, (cov + cov.T) / 2


def _differ(
    values: np.ndarray,
    originals: np.ndarray,
    rows: np.ndarray,
    spread: float,
    grid: ValueGrid,
    gap: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Make every replacement row differ from its original in at least one position.

    A draw can round back to the original (int8 weights with a small spread, float16,
    a coarse grid, an all-zero pattern over an all-zero kernel): such a kernel would be
    "encrypted" and unchanged. One random position of each such row moves by the
    layer's spread (at least one step of the grid), inside its range and on its grid.
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
        moved = _fit((base + sign * spread)[:, None], rows[same], grid, gap)[:, 0]
    values = values.copy()
    values[same, pos] = _to_dtype(moved, values.dtype)
    # A tiny spread can still round back: step to the next value of the grid (or dtype).
    still = values[same, pos] == originals[same, pos]
    if still.any() and not np.issubdtype(values.dtype, np.integer):
        idx = (same[still], pos[still])
        values[idx] = _next_value(originals[idx], rows[same[still]], grid, sign[still] > 0)
    return values


class UnmaskableLayer(ValueError):
    """No replacement can differ from the original without leaving the layer's range."""


_MOMENT_ROWS = 1 << 14  # rows per chunk: float64 temporaries stay small


@dataclass(frozen=True)
class _Moments:
    """Per-position count, sum and sum of squares of a layer's nonzero ``values - shift``.

    Attributes:
        count: nonzero values per position.
        total: their sum, less ``shift``.
        squares: their sum of squares, less ``shift``.
        shift: a rough per-position mean (keeps the sum of squares free of cancellation).
        gap: the smallest nonzero magnitude of the layer (0.0 if it has none).
        full_total: the sum of all values less ``shift``, zeros included.
        cross: ``(width, width)`` sums of products of all values less ``shift``.
    """

    count: np.ndarray
    total: np.ndarray
    squares: np.ndarray
    shift: np.ndarray
    gap: float
    full_total: np.ndarray
    cross: np.ndarray


def _moments(kernels: np.ndarray) -> _Moments:
    """The moments of a layer's nonzero values, a chunk of rows at a time.

    Chunks of rows bound the float64 temporaries (a loop over chunks, not weights).
    """
    shift = kernels[:_MOMENT_ROWS].mean(axis=0, dtype=np.float64)
    count = np.zeros(kernels.shape[1])
    total = np.zeros(kernels.shape[1])
    squares = np.zeros(kernels.shape[1])
    full_total = np.zeros(kernels.shape[1])
    cross = np.zeros((kernels.shape[1], kernels.shape[1]))
    gap = np.inf
    for start in range(0, kernels.shape[0], _MOMENT_ROWS):
        rows = kernels[start : start + _MOMENT_ROWS]
        live = rows != 0
        full = rows.astype(np.float64) - shift
        dense = bool(live.size and live.all())  # no zeros: the nonzero sums are the full ones
        chunk = full if dense else np.where(live, full, 0.0)
        count += live.sum(axis=0)
        sums = full.sum(axis=0)
        total += sums if dense else chunk.sum(axis=0)
        squares += np.einsum("ij,ij->j", chunk, chunk)
        full_total += sums
        # (a matrix product of one column is slow in BLAS: a sum of squares instead)
        cross += full.T @ full if full.shape[1] > 1 else np.einsum("ij,ij->", full, full)
        if dense:
            gap = min(gap, float(np.abs(rows).min()))
        elif live.any():
            gap = min(gap, float(np.abs(rows[live]).min()))
    gap = gap if np.isfinite(gap) else 0.0
    return _Moments(count, total, squares, shift, gap, full_total, cross)


def _mean_std(
    count: np.ndarray, total: np.ndarray, squares: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    counted = np.maximum(count, 1)  # an all-zero position: mean and spread 0
    mean = total / counted
    return mean, np.sqrt(np.maximum(squares / counted - mean**2, 0.0))


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
    axes = (int(weight.shape[0]), int(weight.shape[1]))
    replacements = dprm_values(kernels, selected, rng, method, axes=axes)
    originals = kernels[selected].copy()
    masked = kernels.copy()
    masked[selected] = replacements
    return masked.reshape(weight.shape), MaskedLayer(address, selected, originals, replacements)


def _from_base(
    address: str, weight: np.ndarray, selected: np.ndarray, base: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, MaskedLayer]:
    kernels = kernel_matrix(weight)
    replacements = replacements_from_base(base[address], selected)
    masked = kernels.copy()
    masked[selected] = replacements
    record = MaskedLayer(address, selected, kernels[selected].copy(), replacements)
    return masked.reshape(weight.shape), record


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
    base: Mapping[str, np.ndarray] | None = None,
) -> list[MaskedLayer]:
    """Replace the selected kernels in ``model`` by DPRM draws, or by the kernels of
    ``base`` where it has the weight (:mod:`_select.base`); return what was replaced."""
    masked = []
    for layer in progress(selection.layers, desc="masking", enabled=show_progress):
        weight = arrays[layer.address]
        try:
            if base is not None and layer.address in base:
                new_values, record = _from_base(layer.address, weight, layer.kernels, base)
            else:
                new_values, record = mask_layer(layer.address, weight, layer.kernels, rng, masking)
        except UnmaskableLayer as exc:  # all-equal weights are left out above: say which
            raise UnsupportedModel(f"weight {layer.address!r} cannot be masked: {exc}") from None
        write_array(weight_tensor(model, by_address[layer.address]), new_values)
        masked.append(record)
    return masked
