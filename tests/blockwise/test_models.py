"""Tiny ONNX models (built with onnx.helper) for the block-wise tests, and checks of them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 20
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, value: np.ndarray, base: str = "c", *, as_node: bool = False) -> str:
        name = self.name(base)
        tensor = numpy_helper.from_array(np.asarray(value), name)
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def weight(self, *shape: int, scale: float = 1.0, base: str = "w", **kw: bool) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        value = self.rng.normal(0, scale / np.sqrt(fan_in), shape).astype(np.float32)
        return self.const(value, base, **kw)

    def op(self, op: str, inputs: list[str], name: str | None = None, **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=name or out, **attrs))
        return out

    def model(self, x: onnx.ValueInfoProto, y: str, classes: int) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", classes])
        graph = helper.make_graph(self.nodes, "g", [x], [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 10
        onnx.checker.check_model(model)
        return model


def _input(b: _Builder, channels: int, size: int, layout: str, dtype: int) -> tuple:
    shape = ["N", channels, size, size] if layout == "NCHW" else ["N", size, size, channels]
    x = helper.make_tensor_value_info("x", dtype, shape)
    t = "x"
    if dtype != TensorProto.FLOAT:
        t = b.op("Cast", [t], to=TensorProto.FLOAT)
        t = b.op("Div", [t, b.const(np.float32(255.0))])
    return x, t


def _norm(b: _Builder, t: str, norm: str | None, layout: str, channels: int) -> str:
    shape = (channels, 1, 1) if layout == "NCHW" else (channels,)
    mean = np.asarray(MEAN[:channels] + (0.5,) * (channels - 3), np.float32).reshape(shape)
    std = np.asarray(STD[:channels] + (0.25,) * (channels - 3), np.float32).reshape(shape)
    if norm == "sub_div":
        t = b.op("Sub", [t, b.const(mean, "mean")])
        return b.op("Div", [t, b.const(std, "std")])
    if norm == "mul_add":
        t = b.op("Mul", [t, b.const((1 / std).astype(np.float32), "inv_std")])
        return b.op("Add", [t, b.const((-mean / std).astype(np.float32), "shift")])
    return t


def patch_model(
    *,
    patch: int = 4,
    channels: int = 3,
    size: int = 16,
    hidden: int = 12,
    classes: int = 5,
    bias: bool = True,
    norm: str | None = None,
    layout: str = "NCHW",
    constant_weight: bool = False,
    dtype: int = TensorProto.FLOAT,
    seed: int = 0,
    mixer: bool = False,
    norm_after_transpose: bool = False,
) -> onnx.ModelProto:
    """Patch-embedding stem -> GELU -> [ConvMixer block] -> global pool -> linear head."""
    b = _Builder(seed)
    x, t = _input(b, channels, size, layout, dtype)
    if layout == "NHWC" and not norm_after_transpose:
        # normalise in NHWC before the Transpose, like a TF export
        t = b.op("Transpose", [_norm(b, t, norm, "NHWC", channels)], perm=[0, 3, 1, 2])
    elif layout == "NHWC":
        t = _norm(b, b.op("Transpose", [t], perm=[0, 3, 1, 2]), norm, "NCHW", channels)
    else:
        t = _norm(b, t, norm, layout, channels)
    w = b.weight(hidden, channels, patch, patch, base="stem_w", as_node=constant_weight)
    ins = [t, w] + (
        [b.const(b.rng.normal(0, 0.1, hidden).astype(np.float32), "stem_b")] if bias else []
    )
    t = b.op("Conv", ins, kernel_shape=[patch, patch], strides=[patch, patch])
    t = b.op("Gelu", [t])
    if mixer:
        dw = b.weight(hidden, 1, 3, 3, base="dw")
        r = b.op("Conv", [t, dw], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=hidden)
        t = b.op("Add", [t, b.op("Gelu", [r])])
        t = b.op("Conv", [t, b.weight(hidden, hidden, 1, 1, base="pw")], kernel_shape=[1, 1])
        t = b.op("Gelu", [t])
    t = b.op("GlobalAveragePool", [t])
    t = b.op("Flatten", [t], axis=1)
    y = b.op(
        "Gemm",
        [
            t,
            b.weight(classes, hidden, scale=3.0, base="head"),
            b.const(np.zeros(classes, np.float32)),
        ],
        transB=1,
    )
    return b.model(x, y, classes)


def resnet_like(seed: int = 0) -> onnx.ModelProto:
    """A ResNet stem: 7x7 stride-2 conv with padding 3 (not a patch embedding)."""
    b = _Builder(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])
    t = b.op(
        "Conv",
        ["x", b.weight(8, 3, 7, 7, base="conv1")],
        kernel_shape=[7, 7],
        strides=[2, 2],
        pads=[3, 3, 3, 3],
        name="conv1",
    )
    t = b.op("Relu", [t])
    t = b.op("Flatten", [b.op("GlobalAveragePool", [t])], axis=1)
    return b.model(x, b.op("Gemm", [t, b.weight(4, 8, base="fc")], transB=1), 4)


def no_conv(seed: int = 0) -> onnx.ModelProto:
    """An MLP on flattened pixels."""
    b = _Builder(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    t = b.op("Flatten", ["x"], axis=1)
    return b.model(x, b.op("MatMul", [t, b.weight(192, 4, base="fc")]), 4)


def vit_like(
    *,
    patch: int = 4,
    channels: int = 3,
    size: int = 16,
    dim: int = 16,
    classes: int = 5,
    cls_token: bool = False,
    heads: int = 2,
    share_pos: bool = False,
    token_mlp: bool = False,
    pos_on_grid: bool = False,
    attn_bias: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Patch embed -> tokens -> (+cls) + pos -> LN -> attention -> MLP -> pool -> head."""
    b = _Builder(seed)
    n = (size // patch) ** 2
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])
    t = b.op(
        "Conv",
        [
            "x",
            b.weight(dim, channels, patch, patch, base="pe_w"),
            b.const(np.zeros(dim, np.float32), "pe_b"),
        ],
        kernel_shape=[patch, patch],
        strides=[patch, patch],
    )
    g = size // patch
    if pos_on_grid:
        t = b.op("Add", [t, b.weight(1, dim, g, g, scale=float(np.sqrt(dim * g * g)), base="pos")])
    t = b.op("Reshape", [t, b.const(np.array([0, dim, -1], np.int64))])
    t = b.op("Transpose", [t], perm=[0, 2, 1])
    tokens = n
    if cls_token:
        cls = b.weight(1, 1, dim, scale=1.0, base="cls")
        shape = b.op("Shape", [t])
        batch = b.op("Slice", [shape, b.const(np.array([0])), b.const(np.array([1]))])
        tgt = b.op("Concat", [batch, b.const(np.array([1, dim], np.int64))], axis=0)
        t = b.op("Concat", [b.op("Expand", [cls, tgt]), t], axis=1)
        tokens += 1
    if not pos_on_grid:
        pos = b.weight(1, tokens, dim, scale=float(np.sqrt(tokens * dim)), base="pos")
        t = b.op("Add", [t, pos])
        if share_pos:
            # the same position table is also read by an unrelated branch
            extra = b.op("ReduceMean", [pos, b.const(np.array([1], np.int64))], keepdims=0)
            t = b.op("Add", [t, b.op("Unsqueeze", [extra, b.const(np.array([1], np.int64))])])
    if token_mlp:
        u = b.op("Transpose", [t], perm=[0, 2, 1])
        u = b.op("MatMul", [u, b.weight(tokens, tokens, base="tok")])
        t = b.op("Add", [t, b.op("Transpose", [u], perm=[0, 2, 1])])
    hd = dim // heads

    def ln(v: str) -> str:
        return b.op(
            "LayerNormalization",
            [v, b.const(np.ones(dim, np.float32)), b.const(np.zeros(dim, np.float32))],
            axis=-1,
        )

    def split_heads(v: str) -> str:
        v = b.op("Reshape", [v, b.const(np.array([0, tokens, heads, hd], np.int64))])
        return b.op("Transpose", [v], perm=[0, 2, 1, 3])

    h = ln(t)
    q, k, v = (split_heads(b.op("MatMul", [h, b.weight(dim, dim, base=nm)])) for nm in "qkv")
    a = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    a = b.op("Mul", [a, b.const(np.float32(hd**-0.5))])
    if attn_bias:  # a learned (heads, N, N) attention bias, permuted on both token axes
        a = b.op("Add", [a, b.weight(1, heads, tokens, tokens, scale=30.0, base="bias")])
    a = b.op("Softmax", [a], axis=-1)
    o = b.op("Transpose", [b.op("MatMul", [a, v])], perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.const(np.array([0, tokens, dim], np.int64))])
    t = b.op("Add", [t, b.op("MatMul", [o, b.weight(dim, dim, base="proj")])])
    m = b.op("Gelu", [b.op("MatMul", [ln(t), b.weight(dim, 2 * dim, base="fc1")])])
    t = b.op("Add", [t, b.op("MatMul", [m, b.weight(2 * dim, dim, base="fc2")])])
    t = ln(t)
    if cls_token:
        t = b.op("Gather", [t, b.const(np.array(0, np.int64))], axis=1)
    else:
        t = b.op("ReduceMean", [t, b.const(np.array([1], np.int64))], keepdims=0)
    y = b.op(
        "Add",
        [
            b.op("MatMul", [t, b.weight(dim, classes, scale=3.0, base="head")]),
            b.const(np.zeros(classes, np.float32)),
        ],
    )
    return b.model(x, y, classes)


def token_model(tail: str, *, seed: int = 0, classes: int = 5) -> onnx.ModelProto:
    """Patch tokens + position embedding, then a ``tail`` that reshapes the token axis.

    ``seq_first``: tokens merged with the batch as ``(N * B, D)`` rows for a Gemm (what
    ``nn.MultiheadAttention`` exports); ``flatten_head``: ``(B, N * D)`` into a linear
    head; ``ln_across_tokens``: LayerNorm over the features of two tokens at once.
    """
    b = _Builder(seed)
    n, dim = 16, 8
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    t = b.op(
        "Conv", ["x", b.weight(dim, 3, 4, 4, base="pe_w")], kernel_shape=[4, 4], strides=[4, 4]
    )
    t = b.op("Transpose", [b.op("Reshape", [t, b.const(np.array([0, dim, -1]))])], perm=[0, 2, 1])
    t = b.op("Add", [t, b.weight(1, n, dim, scale=float(np.sqrt(n * dim)), base="pos")])
    if tail == "seq_first":
        t = b.op("Reshape", [b.op("Transpose", [t], perm=[1, 0, 2]), b.const(np.array([-1, dim]))])
        t = b.op("Gelu", [b.op("Gemm", [t, b.weight(dim, dim, base="proj")])])
        t = b.op(
            "Transpose", [b.op("Reshape", [t, b.const(np.array([n, -1, dim]))])], perm=[1, 0, 2]
        )
        t = b.op("ReduceMean", [t, b.const(np.array([1]))], keepdims=0)
        y = b.op("MatMul", [t, b.weight(dim, classes, scale=3.0, base="head")])
    elif tail == "flatten_head":
        t = b.op("Flatten", [b.op("Gelu", [t])], axis=1)
        y = b.op("Gemm", [t, b.weight(n * dim, classes, scale=3.0, base="head")])
    else:
        t = b.op("Reshape", [t, b.const(np.array([0, n // 2, 2 * dim]))])
        t = b.op("LayerNormalization", [t, b.const(np.ones(2 * dim, np.float32))])
        y = b.op("ReduceMean", [t, b.const(np.array([1]))], keepdims=0)
        classes = 2 * dim
    return b.model(x, y, classes)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Run ``model`` on ``x`` with onnxruntime (one thread)."""
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(
    "model",
    [
        patch_model(),
        patch_model(norm="sub_div", layout="NHWC", constant_weight=True, bias=False),
        patch_model(mixer=True, dtype=TensorProto.UINT8),
        vit_like(),
        vit_like(cls_token=True, token_mlp=True),
        vit_like(pos_on_grid=True),
        vit_like(attn_bias=True),
        token_model("seq_first"),
        token_model("flatten_head"),
        token_model("ln_across_tokens"),
        resnet_like(),
        no_conv(),
    ],
    ids=[
        "patch",
        "nhwc",
        "mixer_u8",
        "vit",
        "vit_cls",
        "vit_grid",
        "vit_bias",
        "seq_first",
        "flatten_head",
        "ln_tokens",
        "resnet",
        "noconv",
    ],
)
def test_builders_make_valid_runnable_models(model: onnx.ModelProto) -> None:
    vi = model.graph.input[0]
    dims = [d.dim_value or 2 for d in vi.type.tensor_type.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    x = np.random.default_rng(0).integers(0, 256, dims).astype(dtype)
    y = run(model, x)
    assert y.shape[0] == 2 and np.all(np.isfinite(y))
