"""Keyed wiring: a secret order for each wired conv's output channels, applied in place.

The public model holds every wired tensor (conv weight, its bias, the BatchNormalization
after it) with its first axis permuted the same way, while the layer reading those
channels keeps its true input order. What level 1 restores is the inverse order of
each tensor; the masked kernels of every level are sealed in the true order, so the
loader undoes the wiring before it puts kernels back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_selenc._onnx.channels import WiredLayer
from onnx_selenc._onnx.graph import split_address
from onnx_selenc._onnx.tensors import graph_constants, read_array, write_array


@dataclass(frozen=True)
class WiredTensor:
    """One tensor as wired: ``true = public[order]`` along its first axis.

    Attributes:
        address: the tensor's address.
        dtype: numpy dtype name of its stored values.
        shape: its shape.
        order: int64 indices; the inverse of the permutation the public file holds.
    """

    address: str
    dtype: str
    shape: tuple[int, ...]
    order: np.ndarray


def channel_permutation(channels: int, group_size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``channels`` that keeps each group's block."""
    groups = channels // group_size
    within = np.argsort(rng.random((groups, group_size)), axis=1)
    return (within + group_size * np.arange(groups)[:, None]).ravel().astype(np.int64)


def wire_layers(
    model: onnx.ModelProto, layers: Sequence[WiredLayer], rng: np.random.Generator
) -> tuple[list[WiredTensor], dict[str, np.ndarray]]:
    """Permute each layer's tensors in ``model`` (data in memory) with a fresh secret order.

    Returns:
        The wired tensors (what level 1 seals) and each one's values before wiring.
    """
    tensors = graph_constants(model.graph)
    wired: list[WiredTensor] = []
    before: dict[str, np.ndarray] = {}
    for layer in layers:
        permutation = channel_permutation(layer.channels, layer.group_size, rng)
        order = np.argsort(permutation).astype(np.int64)
        for address in layer.tensors:
            tensor = tensors[split_address(address)[1]]
            values = read_array(tensor, None)
            before[address] = values
            write_array(tensor, values[permutation])
            wired.append(WiredTensor(address, values.dtype.name, tuple(values.shape), order))
    return wired, before
