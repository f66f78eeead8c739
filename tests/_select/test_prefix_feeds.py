"""The liveness probe's feeds patched in place (issue 26) are the arrays
``prefix_restored`` builds afresh, at every cut, and the buffers go back after each."""

from __future__ import annotations

import numpy as np

from onnx_selenc._select.levels import prefix_restored
from onnx_selenc._select.liveness import global_order
from onnx_selenc._select.masking import mask_layer
from onnx_selenc._select.prefix_feeds import PrefixFeeds
from onnx_selenc._select.selection import LayerSelection


def test_prefix_feeds_equal_prefix_restored_at_every_cut() -> None:
    rng = np.random.default_rng(0)
    shapes = {"a": (8, 4, 3, 3), "b": (6, 8, 1, 1), "c": (4, 6, 5, 5)}
    base, layers, masked = {}, [], []
    for address, shape in shapes.items():
        weight = rng.standard_normal(shape).astype(np.float32)
        kernels = np.sort(rng.choice(shape[0] * shape[1], size=7, replace=False))
        levels = rng.integers(1, 4, size=kernels.size).astype(np.int16)
        masked_weight, record = mask_layer(address, weight, kernels, rng)
        base[address] = masked_weight
        layers.append(LayerSelection(address, kernels, levels))
        masked.append(record)
    before = {k: v.copy() for k, v in base.items()}
    order = global_order(layers)
    feeds = PrefixFeeds(base, layers, masked, order)
    for k in [0, 1, 5, 20, 7, len(order[0]), 0]:  # out of order too: the buffers go back
        want = prefix_restored(base, layers, masked, order, k)
        with feeds.at(k) as got:
            assert got.keys() == want.keys()
            for address in want:
                assert np.array_equal(got[address].view(np.uint32), want[address].view(np.uint32))
    for address in base:  # the masked weights themselves are never written
        assert np.array_equal(base[address], before[address])
