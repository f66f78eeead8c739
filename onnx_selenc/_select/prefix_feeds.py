"""Probe feeds with a prefix of the restore order restored, patched in place.

The liveness check runs the probe at several cuts of the global restore order
(``liveness``); each run needs every selected weight with the first ``k`` kernels
restored. :func:`levels.prefix_restored` builds them afresh, a copy of every weight
per run; here one working copy per weight is made once and only the restored kernels
are written in and taken out again around each run (the same arrays, bit for bit).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from onnx_selenc._onnx.tensors import kernel_matrix
from onnx_selenc._select.masking import MaskedLayer
from onnx_selenc._select.selection import LayerSelection


class PrefixFeeds:
    """The weights of ``layers`` with a prefix of ``order`` restored, one buffer each.

    Args:
        base: the masked weights by address (read, never written).
        layers: the selected layers.
        masked: their originals, aligned with ``layers``.
        order: ``(layer index, position)`` of every selected kernel in restore order.
    """

    def __init__(
        self,
        base: Mapping[str, np.ndarray],
        layers: Sequence[LayerSelection],
        masked: Sequence[MaskedLayer],
        order: tuple[np.ndarray, np.ndarray],
    ) -> None:
        self._base = base
        self._layers = layers
        self._masked = masked
        self._order = order
        self._work = {layer.address: base[layer.address].copy() for layer in layers}

    @contextmanager
    def at(self, k: int) -> Iterator[dict[str, np.ndarray]]:
        """The feeds with the first ``k`` kernels restored, valid inside the block only
        (the buffers go back to the masked values after it)."""
        ids, positions = self._order[0][:k], self._order[1][:k]
        touched = []
        for li, (layer, rec) in enumerate(zip(self._layers, self._masked, strict=True)):
            pos = positions[ids == li]
            if pos.size:
                rows = layer.kernels[pos]
                kernel_matrix(self._work[layer.address])[rows] = rec.originals[pos]
                touched.append((layer.address, rows))
        try:
            yield dict(self._work)
        finally:
            for address, rows in touched:
                masked = kernel_matrix(self._base[address])[rows]
                kernel_matrix(self._work[address])[rows] = masked
