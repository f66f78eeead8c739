"""Masking from a base model: level 0 holds the public checkpoint's own kernels.

Most production CNNs are fine-tuned from a published checkpoint. Against such a
reference, any kernel level 0 keeps from the fine-tuned model is a head start, and
random replacements are told apart from the fine-tuned kernels by matching the file to
the checkpoint (BENCHMARKS.md, "Wiring against a reference the weights descend from").
With a base, every kernel that differs from the base's is encrypted and its level-0
value is the base's: level 0 carries nothing the checkpoint lacks in those weights. The
model's other float tensors the base shares by name (conv biases, batch norms, a Gemm
head) take the base's values too where they differ, and come back at level 1: a
fine-tuned head or batch norm is as much a head start as a kernel.

Weights are matched to the base by address (the tensor's graph path and name), or, when
no address matches, by position among the conv weights if both models list the same
shapes and dtypes in the same order (an exporter that renumbers its tensors).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnx_selenc._onnx.graph import (
    ONNX_DOMAINS,
    ConvWeight,
    subgraphs,
    tensor_address,
    walk_conv_weights,
)
from onnx_selenc._onnx.modelio import load_model, with_conv_functions_inlined
from onnx_selenc._onnx.tensors import (
    graph_constants,
    kernel_matrix,
    read_array,
    weight_tensor,
    write_array,
)

MATCH_BY_ADDRESS = "address"
MATCH_BY_POSITION = "position"


@dataclass(frozen=True)
class BaseReport:
    """What a base did, for the caller: no arrays.

    Attributes:
        matched: addresses of the weights whose level-0 kernels are the base's.
        missing: ``(address, reason)`` of conv weights the base lacks (masked whole).
        matched_by: ``"address"`` or ``"position"``.
        differing_kernels: kernels that differ from the base's (all encrypted).
        equal_kernels: kernels equal to the base's, bit for bit (left as they are).
        other_tensors: the non-conv tensors whose level 0 holds the base's values
            where they differ (restored at level 1).
        other_values: how many values of those differ from the base's.
    """

    matched: tuple[str, ...]
    missing: tuple[tuple[str, str], ...]
    matched_by: str
    differing_kernels: int
    equal_kernels: int
    other_tensors: tuple[str, ...] = ()
    other_values: int = 0


@dataclass(frozen=True)
class BaseMatch:
    """The chosen weights' counterparts in the base model.

    Attributes:
        counterparts: address -> the base's weight (same shape and dtype).
        missing: ``(address, reason)`` of chosen weights with no counterpart: they are
            masked whole (nothing public stands in for them).
        matched_by: ``"address"`` or ``"position"``.
    """

    counterparts: Mapping[str, np.ndarray]
    missing: tuple[tuple[str, str], ...]
    matched_by: str
    # The base's other float tensors of the main graph, by name (see take_from_base).
    others: Mapping[str, np.ndarray] = field(default_factory=dict)

    def differing(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per matched weight, a flag per kernel: it differs from the base's, bit for bit."""
        return {
            address: differing_kernels(arrays[address], base)
            for address, base in self.counterparts.items()
        }

    def report(
        self, differing: Mapping[str, np.ndarray], taken: Sequence[TakenTensor] = ()
    ) -> BaseReport:
        """The caller's summary, given :meth:`differing`'s flags and the tensors taken."""
        n_diff = sum(int(f.sum()) for f in differing.values())
        n_all = sum(int(f.size) for f in differing.values())
        return BaseReport(
            tuple(self.counterparts), self.missing, self.matched_by, n_diff, n_all - n_diff,
            tuple(t.address for t in taken), sum(len(t.kernels) for t in taken),
        )  # fmt: skip


@dataclass(frozen=True)
class TakenTensor:
    """A non-conv tensor whose level-0 values are the base's where they differ.

    Attributes:
        address: the tensor's address (a main-graph tensor: its escaped name).
        kernels: rows of its :func:`kernel_matrix` that differ from the base's (for a
            rank-1 tensor, its elements), restored at level 1.
        original: the tensor's original values, whole.
    """

    address: str
    kernels: np.ndarray
    original: np.ndarray


def load_base(path: str | os.PathLike[str], chosen: Sequence[ConvWeight]) -> BaseMatch:
    """The chosen weights' counterparts in the base model at ``path``.

    Raises:
        ValueError: the base has none of them (by address or by position).
        UnsupportedModel: the base holds convs in model-local functions past 2 GB.
    """
    model = with_conv_functions_inlined(load_model(path))
    weights = walk_conv_weights(model).weights
    arrays = {w.address: read_array(weight_tensor(model, w), None) for w in weights}
    match = match_base(chosen, weights, arrays)
    conv = {w.address for w in weights}
    others = {
        name: read_array(t, None)
        for name, t in graph_constants(model.graph).items()
        if tensor_address((), name) not in conv and t.data_type in _TAKEN_TYPES
    }
    match = replace(match, others=others)
    if not match.counterparts:
        reasons = "; ".join(f"{a}: {r}" for a, r in match.missing[:3])
        raise ValueError(
            f"the base {path} has none of this model's conv weights, by name or by position "
            f"({reasons}{'; ...' if len(match.missing) > 3 else ''}): is it the model these "
            "weights were fine-tuned from?"
        )
    for address, reason in match.missing:
        warnings.warn(
            f"{address}: not in the base ({reason}); every kernel masked instead", stacklevel=5
        )
    return match


# Float element types whose values a payload can carry (bfloat16 is not among them).
_TAKEN_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
)


# Inputs that hold a layer's learned values (by op, the input positions): only tensors
# read there and nowhere else are taken, never a float that sets a shape (Resize scales).
_WEIGHT_INPUTS: dict[str, frozenset[int]] = {
    "Conv": frozenset({2}),
    "ConvTranspose": frozenset({2}),
    "BatchNormalization": frozenset({1, 2, 3, 4}),
    "InstanceNormalization": frozenset({1, 2}),
    "LayerNormalization": frozenset({1, 2}),
    "GroupNormalization": frozenset({1, 2}),
    "Gemm": frozenset({0, 1, 2}),
    "MatMul": frozenset({0, 1}),
    "Add": frozenset({0, 1}),
    "Sub": frozenset({0, 1}),
    "Mul": frozenset({0, 1}),
    "Div": frozenset({0, 1}),
    "PRelu": frozenset({1}),
}


def _weight_only(graph: onnx.GraphProto) -> set[str]:
    """Names every reader of which, in the graph and its subgraphs, reads as a weight."""
    uses: dict[str, bool] = {}

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            standard = node.domain in ONNX_DOMAINS
            slots = _WEIGHT_INPUTS.get(node.op_type, frozenset()) if standard else frozenset()
            for i, name in enumerate(node.input):
                uses[name] = uses.get(name, True) and i in slots
            for _, sub in subgraphs(node):
                visit(sub)

    visit(graph)
    return {name for name, ok in uses.items() if ok}


def take_from_base(
    model: onnx.ModelProto,
    conv_addresses: set[str],
    base: BaseMatch,
    rng: np.random.Generator,
) -> list[TakenTensor]:
    """Give the model's main-graph float tensors that are not conv weights, and are read
    only as a layer's weights (biases, batch norms, dense layers), the base's values
    wherever they differ (same name, shape and type), in place; return what was
    replaced. Such a tensor the base lacks (a new head) gets its own values in a random
    order instead: nothing public stands in for it. Integer tensors (shapes, indices),
    scalars and floats read anywhere else (a Resize's scales) are never touched."""
    taken = []
    weight_only = _weight_only(model.graph)
    for name, tensor in graph_constants(model.graph).items():
        address = tensor_address((), name)
        if (
            address in conv_addresses
            or tensor.data_type not in _TAKEN_TYPES
            or name not in weight_only
        ):
            continue
        values = read_array(tensor, None)
        if values.ndim == 0 or values.size < 2:
            continue
        other = base.others.get(name)
        if other is None or values.shape != other.shape or values.dtype != other.dtype:
            other = _cycled(values, rng)
        rows = differing_kernels(values, other)
        if not rows.any():
            continue
        public = kernel_matrix(values).copy()
        public[rows] = kernel_matrix(other)[rows]
        write_array(tensor, public.reshape(values.shape))
        taken.append(TakenTensor(address, np.flatnonzero(rows), values))
    return taken


def _cycled(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The tensor's values moved along one random cycle through all positions, so no
    value stays where it was (a plain shuffle leaves some in place)."""
    flat = values.reshape(-1)
    order = rng.permutation(flat.size)
    out = np.empty_like(flat)
    out[order] = flat[np.roll(order, 1)]
    return out.reshape(values.shape)


def base_counts(
    scores: MutableMapping[str, np.ndarray],
    differing: Mapping[str, np.ndarray],
    missing: Mapping[str, int],
) -> dict[str, int]:
    """Rank each matched weight's kernels equal to the base's last, in place, and return
    how many kernels of each weight are encrypted: those that differ from the base's,
    and every kernel of a weight the base lacks (``missing``: its kernel count), since
    nothing public could stand in for a layer the fine-tuning added.

    Raises:
        ValueError: no kernel differs and no weight lacks a counterpart.
    """
    for address, flags in differing.items():
        scores[address] = base_scores(scores[address], flags)
    counts = {address: int(flags.sum()) for address, flags in differing.items()}
    if counts and not any(counts.values()) and not missing:
        raise ValueError("every conv kernel equals the base's: there is nothing to encrypt")
    return {**counts, **missing}


def match_base(
    chosen: Sequence[ConvWeight],
    base_weights: Sequence[ConvWeight],
    base_arrays: Mapping[str, np.ndarray],
) -> BaseMatch:
    """Pair each chosen weight with the base's weight of the same address (or position)."""
    by_address = {w.address: w for w in base_weights}
    found: dict[str, np.ndarray] = {}
    missing: list[tuple[str, str]] = []
    for w in chosen:
        other = by_address.get(w.address)
        if other is None:
            missing.append((w.address, "the base has no conv weight of this name"))
        elif (other.shape, other.dtype) != (w.shape, w.dtype):
            missing.append(
                (w.address, f"the base's is {other.dtype} {list(other.shape)}, "
                            f"this one {w.dtype} {list(w.shape)}")
            )  # fmt: skip
        else:
            found[w.address] = base_arrays[other.address]
    if found or not _same_layout(chosen, base_weights):
        return BaseMatch(found, tuple(missing), MATCH_BY_ADDRESS)
    # No name in common but the same conv weights in the same order: a renumbering export.
    pairs = zip(chosen, base_weights, strict=True)
    positional = {w.address: base_arrays[b.address] for w, b in pairs}
    return BaseMatch(positional, (), MATCH_BY_POSITION)


def _same_layout(chosen: Sequence[ConvWeight], base_weights: Sequence[ConvWeight]) -> bool:
    return len(chosen) == len(base_weights) and all(
        (a.shape, a.dtype) == (b.shape, b.dtype) for a, b in zip(chosen, base_weights, strict=True)
    )


def differing_kernels(weight: np.ndarray, base: np.ndarray) -> np.ndarray:
    """A flag per kernel (row of :func:`kernel_matrix`): some value differs bit for bit."""
    a, b = kernel_matrix(weight), kernel_matrix(base)
    # Bit patterns, not values: -0.0 against 0.0 or a NaN payload is a difference to seal.
    view = np.dtype(f"u{a.dtype.itemsize}")
    return np.asarray((a.view(view) != b.view(view)).any(axis=1))


def base_scores(scores: np.ndarray, differing: np.ndarray) -> np.ndarray:
    """Scores with every kernel equal to the base's ranked last (it restores nothing)."""
    out = np.asarray(scores, dtype=np.float64).copy()
    out[~differing] = -np.inf
    return out


def replacements_from_base(base: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """The level-0 values of the selected kernels: the base's, in the weight's dtype."""
    return np.ascontiguousarray(kernel_matrix(base)[selected])
