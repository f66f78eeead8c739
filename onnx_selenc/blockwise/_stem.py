"""Detection of the patch-embedding stem (kernel = stride = P, no padding, group 1).

The stem must be the first Conv the image input reaches, through nothing but
Transpose (NHWC -> NCHW), Cast to a float type, Identity, and per-channel
affine normalisation (Sub/Add/Mul/Div with constants). Anything else is refused
with :class:`~onnx_selenc.exceptions.UnsupportedModel` saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnx_selenc.blockwise._graph import GraphIndex, attr, node_label, tensor_shape
from onnx_selenc.exceptions import UnsupportedModel

_CHAIN_OPS = ("Transpose", "Cast", "Identity", "Sub", "Add", "Mul", "Div")
_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
)
_SHAPE_ONLY = ("Shape", "Size")


@dataclass(frozen=True)
class PatchStem:
    """Where the patch embedding is and what feeds it.

    Attributes:
        conv: Name (or ``Conv#index``) of the stem Conv node.
        conv_index: Index of the stem node in ``graph.node``.
        input_name: The graph input holding the image.
        input_shape: Declared input dims (int, symbolic str, or None).
        input_elem_type: ONNX element type of the input (e.g. FLOAT, UINT8).
        layout: "NCHW", or "NHWC" when a Transpose [0, 3, 1, 2] precedes the stem.
        patch: Kernel size = stride ``P``.
        channels: Input channels ``C``.
        out_channels: Embedding width ``h``.
        weight: Tensor name of the stem weight (as the Conv reads it).
        bias: Tensor name of the stem bias, or None when the Conv has none.
        scale: Per-channel scale of the in-graph normalisation (conv input =
            ``scale[c] * input + shift[c]``; all ones without normalisation).
        shift: Per-channel shift of the in-graph normalisation.
        chain: Labels of the nodes between the input and the stem.
    """

    conv: str
    conv_index: int
    input_name: str
    input_shape: tuple[int | str | None, ...]
    input_elem_type: int
    layout: str
    patch: int
    channels: int
    out_channels: int
    weight: str
    bias: str | None
    scale: tuple[float, ...]
    shift: tuple[float, ...]
    chain: tuple[str, ...]

    @property
    def integer_input(self) -> bool:
        """True when the model takes integer pixels (e.g. uint8)."""
        return self.input_elem_type not in _FLOAT_TYPES

    @property
    def image_size(self) -> tuple[int | None, int | None]:
        """Static ``(H, W)`` of the input, None where dynamic."""
        h, w = self.input_shape[2:4] if self.layout == "NCHW" else self.input_shape[1:3]
        return (h if isinstance(h, int) else None, w if isinstance(w, int) else None)


def find_patch_stem(model: onnx.ModelProto) -> PatchStem:
    """Locate the patch-embedding Conv fed by the image input.

    Args:
        model: The plain model.

    Returns:
        The detected stem.

    Raises:
        UnsupportedModel: If there is no Conv, no 4-D input, the first Conv is not a
            patch embedding (kernel != stride, padding, groups, dilation), its weight
            is computed at run time, or the image reaches anything but the stem.
    """
    index = GraphIndex(model)
    if not any(n.op_type == "Conv" for n in model.graph.node):
        raise UnsupportedModel("the graph has no Conv node: not a patch-embedding model")
    candidates = []
    for vi in model.graph.input:
        shape = tensor_shape(vi)
        if vi.name not in index.initializers and shape is not None and len(shape) == 4:
            candidates.append((vi, shape))
    if not candidates:
        raise UnsupportedModel("the model has no 4-D image input (N, C, H, W or N, H, W, C)")
    errors: list[UnsupportedModel] = []
    for vi, shape in candidates:
        try:
            return _trace(index, vi, shape)
        except UnsupportedModel as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise UnsupportedModel("; ".join(str(e) for e in errors))


def _trace(
    index: GraphIndex, vi: onnx.ValueInfoProto, shape: tuple[int | str | None, ...]
) -> PatchStem:
    name, steps = vi.name, []
    while True:
        if name in index.outputs:
            raise UnsupportedModel(f"the image tensor '{name}' is also a graph output")
        users = [
            i for i in index.consumers.get(name, []) if index.node(i).op_type not in _SHAPE_ONLY
        ]
        if not users:
            raise UnsupportedModel(f"the image input '{vi.name}' never reaches a Conv")
        if len(users) > 1:
            labels = ", ".join(f"'{node_label(index.node(i), i)}'" for i in users)
            raise UnsupportedModel(
                f"tensor '{name}' from the image input is read by {len(users)} nodes ({labels}):"
                " only the patch-embedding stem may read the image, or encrypted pixels would"
                " reach other layers"
            )
        i = users[0]
        node = index.node(i)
        label = node_label(node, i)
        if name not in node.input:
            raise UnsupportedModel(f"node '{label}' reads the image inside a subgraph")
        if node.op_type == "Conv":
            if node.input[0] != name:
                raise UnsupportedModel(f"the image reaches Conv '{label}' as a weight or bias")
            break
        if node.op_type not in _CHAIN_OPS:
            raise UnsupportedModel(
                f"the image input '{vi.name}' reaches {node.op_type} node '{label}' before any"
                " Conv: no patch-embedding stem (only Transpose/Cast/Identity and per-channel"
                " Sub/Add/Mul/Div may precede it)"
            )
        steps.append(i)
        name = node.output[0]
    return _check_conv(index, vi, shape, i, steps)


def _check_conv(
    index: GraphIndex,
    vi: onnx.ValueInfoProto,
    shape: tuple[int | str | None, ...],
    ci: int,
    steps: list[int],
) -> PatchStem:
    node = index.node(ci)
    label = node_label(node, ci)
    weight = index.constant(node.input[1])
    if weight is None:
        raise UnsupportedModel(
            f"stem Conv '{label}' weight '{node.input[1]}' is computed at run time"
            " (not an initializer or Constant): cannot rewrite it"
        )
    if weight.ndim != 4:
        raise UnsupportedModel(f"stem Conv '{label}' is not a 2-D convolution")
    kernel = list(attr(node, "kernel_shape", weight.shape[2:]))
    strides = list(attr(node, "strides", [1, 1]))
    if kernel[0] != kernel[1] or strides[0] != strides[1] or kernel != strides:
        k = str(kernel[0]) if kernel[0] == kernel[1] else f"{kernel[0]}x{kernel[1]}"
        s = str(strides[0]) if strides[0] == strides[1] else f"{strides[0]}x{strides[1]}"
        raise UnsupportedModel(
            f"stem Conv '{label}' has kernel {k} and stride {s}: not a patch embedding,"
            " cannot be compensated exactly"
        )
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    if any(pads) or auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedModel(
            f"stem Conv '{label}' pads its input (pads={pads}, auto_pad={auto_pad}): border"
            " blocks mix with padding, cannot be compensated exactly"
        )
    if any(d != 1 for d in attr(node, "dilations", [1, 1])):
        raise UnsupportedModel(f"stem Conv '{label}' is dilated: not a patch embedding")
    if attr(node, "group", 1) != 1:
        raise UnsupportedModel(
            f"stem Conv '{label}' is grouped (group={attr(node, 'group')}): the key mixes"
            " channels, so it needs a dense (group 1) patch embedding"
        )
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and index.constant(bias) is None:
        raise UnsupportedModel(f"stem Conv '{label}' bias '{bias}' is computed at run time")
    channels = int(weight.shape[1])
    layout, scale, shift = _affine_chain(index, vi.name, steps, channels)
    declared_c = shape[1] if layout == "NCHW" else shape[3]
    if isinstance(declared_c, int) and declared_c != channels:
        raise UnsupportedModel(
            f"input '{vi.name}' has {declared_c} channels but the stem expects {channels}"
        )
    return PatchStem(
        conv=label,
        conv_index=ci,
        input_name=vi.name,
        input_shape=shape,
        input_elem_type=vi.type.tensor_type.elem_type,
        layout=layout,
        patch=int(kernel[0]),
        channels=channels,
        out_channels=int(weight.shape[0]),
        weight=node.input[1],
        bias=bias,
        scale=tuple(float(v) for v in scale),
        shift=tuple(float(v) for v in shift),
        chain=tuple(node_label(index.node(i), i) for i in steps),
    )


def _affine_chain(  # noqa: C901
    index: GraphIndex, input_name: str, steps: list[int], channels: int
) -> tuple[str, np.ndarray, np.ndarray]:
    transposes = [i for i in steps if index.node(i).op_type == "Transpose"]
    if len(transposes) > 1:
        raise UnsupportedModel("more than one Transpose between the image input and the stem")
    layout = "NCHW"
    if transposes:
        node = index.node(transposes[0])
        perm = list(attr(node, "perm", []))
        if perm != [0, 3, 1, 2]:
            raise UnsupportedModel(
                f"Transpose '{node_label(node, transposes[0])}' with perm {perm} before the"
                " stem: only NHWC -> NCHW ([0, 3, 1, 2]) is supported"
            )
        layout = "NHWC"
    axis = 3 if layout == "NHWC" else 1
    scale, shift = np.ones(channels), np.zeros(channels)
    current = input_name
    for i in steps:
        node = index.node(i)
        label, op = node_label(node, i), node.op_type
        if op == "Transpose":
            axis = 1
        elif op == "Cast" and attr(node, "to") not in _FLOAT_TYPES:
            raise UnsupportedModel(f"Cast '{label}' before the stem casts to a non-float type")
        elif op in ("Sub", "Add", "Mul", "Div"):
            if list(node.input).count(current) != 1:
                raise UnsupportedModel(f"{op} '{label}' combines the image with itself")
            slot = list(node.input).index(current)
            other = node.input[1 - slot]
            value = index.constant(other)
            if value is None:
                raise UnsupportedModel(
                    f"normalisation node '{label}' ({op}) uses the non-constant tensor '{other}'"
                )
            k = _per_channel(value, axis, channels, label)
            if op == "Add":
                shift = shift + k
            elif op == "Sub" and slot == 0:
                shift = shift - k
            elif op == "Sub":
                scale, shift = -scale, k - shift
            elif op == "Mul":
                scale, shift = scale * k, shift * k
            elif slot == 1:
                raise UnsupportedModel(f"Div '{label}' divides by the image: not an affine map")
            elif np.any(k == 0):
                raise UnsupportedModel(f"Div '{label}' divides by zero")
            else:
                scale, shift = scale / k, shift / k
        current = node.output[0]
    if np.any(scale == 0) or not np.all(np.isfinite(scale)) or not np.all(np.isfinite(shift)):
        raise UnsupportedModel("the normalisation before the stem is not invertible")
    return layout, scale, shift


def _per_channel(value: np.ndarray, axis: int, channels: int, label: str) -> np.ndarray:
    k = np.asarray(value, dtype=np.float64)
    if k.ndim > 4:
        raise UnsupportedModel(f"normalisation constant of '{label}' has rank {k.ndim}")
    shape = (1,) * (4 - k.ndim) + k.shape
    for ax, size in enumerate(shape):
        if ax != axis and size != 1:
            raise UnsupportedModel(
                f"normalisation constant of '{label}' has shape {list(k.shape)}: it varies over"
                " space or batch, not a per-channel affine map"
            )
    if shape[axis] not in (1, channels):
        raise UnsupportedModel(
            f"normalisation constant of '{label}' has {shape[axis]} channels, not {channels}"
        )
    return np.broadcast_to(k.reshape(-1), (channels,)).astype(np.float64)
