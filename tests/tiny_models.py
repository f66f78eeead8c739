"""Tiny ONNX models built with onnx.helper, one per place a conv weight can live."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what the installed onnxruntime accepts


def _model(nodes, inputs, outputs, inits=(), opset=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, list(inits))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=IR_VERSION,
        producer_name="onnx-selenc-tests",
    )
    onnx.checker.check_model(model)
    return model


def _weights(seed: int, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32) for s in shapes]


def x_info(c: int = 3, hw: int = 8) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, hw, hw])


def y_info(name: str = "y", rank: int = 4) -> onnx.ValueInfoProto:
    dims = [f"{name}_d{i}" for i in range(rank)]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> depthwise Conv -> ConvTranspose -> pool: initializers."""
    w1, w2, w3, w4 = _weights(seed, (8, 3, 3, 3), (16, 8, 3, 3), (16, 1, 3, 3), (16, 4, 2, 2))
    b1 = np.linspace(-0.1, 0.1, 8).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a"], ["a2"]),
        helper.make_node("Conv", ["a2", "w2"], ["b"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Conv", ["b", "w3"], ["c"], pads=[1, 1, 1, 1], group=16, name="dw"),
        helper.make_node("ConvTranspose", ["c", "w4"], ["d"], strides=[2, 2], name="up"),
        helper.make_node("GlobalAveragePool", ["d"], ["e"]),
        helper.make_node("Flatten", ["e"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"), (w4, "w4")]
    ]
    return _model(nodes, [x_info()], [y_info(rank=2)], inits)


def constant_nodes(seed: int = 1) -> onnx.ModelProto:
    """Weights in Constant nodes, no initializers at all (as Paddle exports)."""
    w1, w2 = _weights(seed, (8, 3, 3, 3), (4, 8, 1, 1))
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1")),
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2, "w2")),
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"),
    ]
    return _model(nodes, [x_info()], [y_info()])


def if_subgraph(seed: int = 2) -> onnx.ModelProto:
    """An If whose branches hold convs: one uses an outer initializer, one its own."""
    w_outer, w_then, w_else = _weights(seed, (8, 3, 3, 3), (4, 8, 3, 3), (4, 8, 3, 3))
    then_g = helper.make_graph(
        [helper.make_node("Conv", ["a", "w_then"], ["t_out"], pads=[1, 1, 1, 1], name="t")],
        "then",
        [],
        [y_info("t_out")],
        [numpy_helper.from_array(w_then, "w_then")],
    )
    else_g = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["w_else"], value=numpy_helper.from_array(w_else, "w_else")
            ),
            helper.make_node("Conv", ["a", "w_else"], ["e_out"], pads=[1, 1, 1, 1], name="e"),
        ],
        "else",
        [],
        [y_info("e_out")],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w_outer"], ["a"], pads=[1, 1, 1, 1], name="c0"),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    return _model(
        nodes, [x_info(), cond], [y_info()], [numpy_helper.from_array(w_outer, "w_outer")]
    )


def fp16_cast(seed: int = 3) -> onnx.ModelProto:
    """float16 weights cast to float32 before the conv."""
    (w,) = _weights(seed, (8, 3, 3, 3))
    nodes = [
        helper.make_node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w32"], ["y"], pads=[1, 1, 1, 1], name="c"),
    ]
    return _model(
        nodes, [x_info()], [y_info()], [numpy_helper.from_array(w.astype(np.float16), "w16")]
    )


def quantized(seed: int = 4) -> onnx.ModelProto:
    """int8 weights behind DequantizeLinear."""
    rng = np.random.default_rng(seed)
    wq = rng.integers(-100, 100, size=(8, 3, 3, 3)).astype(np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="c"),
    ]
    inits = [
        numpy_helper.from_array(wq, "wq"),
        numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
    ]
    return _model(nodes, [x_info()], [y_info()], inits)


def shared_weight(seed: int = 5) -> onnx.ModelProto:
    """One weight read by two convs."""
    (w,) = _weights(seed, (3, 3, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1], name="first"),
        helper.make_node("Conv", ["a", "w"], ["y"], pads=[1, 1, 1, 1], name="second"),
    ]
    return _model(nodes, [x_info()], [y_info()], [numpy_helper.from_array(w, "w")])


def runtime_weight(seed: int = 6) -> onnx.ModelProto:
    """One conv with a stored weight, one whose weight is computed at run time."""
    w1, w2 = _weights(seed, (4, 3, 3, 3), (4, 4, 1, 1))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="stored"),
        helper.make_node("Mul", ["w2", "two"], ["w2x"]),
        helper.make_node("Conv", ["a", "w2x"], ["y"], name="computed"),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    return _model(nodes, [x_info()], [y_info()], inits)


def no_conv() -> onnx.ModelProto:
    w = np.ones((3, 3), np.float32)
    nodes = [helper.make_node("MatMul", ["v", "w"], ["y"])]
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 3])
    return _model(nodes, [v], [y_info(rank=2)], [numpy_helper.from_array(w, "w")])


def conv1d(seed: int = 7) -> onnx.ModelProto:
    (w,) = _weights(seed, (6, 3, 5))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16])
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 2], name="c")]
    return _model(nodes, [x], [y_info(rank=3)], [numpy_helper.from_array(w, "w")])


def wide_cnn(seed: int = 8, width: int = 32) -> onnx.ModelProto:
    """A slightly larger CNN (more kernels) for statistics-based tests."""
    w1, w2 = _weights(seed, (width, 3, 3, 3), (width, width, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1], name="c2"),
    ]
    return _model(
        nodes,
        [x_info()],
        [y_info()],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )


ALL = {
    "cnn": cnn,
    "constant_nodes": constant_nodes,
    "if_subgraph": if_subgraph,
    "fp16_cast": fp16_cast,
    "quantized": quantized,
    "shared_weight": shared_weight,
    "conv1d": conv1d,
}


def feeds(model: onnx.ModelProto, n: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for a tiny model (the If condition is set true)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        if inp.name == "cond":
            out["cond"] = np.array(True)
            continue
        dims = [d.dim_value or n for d in inp.type.tensor_type.shape.dim]
        out[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def classifier(seed: int = 10, width: int = 16, classes: int = 10) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> pool -> Gemm: logits for `classes` classes.

    No Relu before the pool, so the pooled features change sign with the input and
    the predicted class varies (a model that always says the same class measures
    nothing).
    """
    w1, w2 = _weights(seed, (width, 3, 3, 3), (2 * width, width, 3, 3))
    (fc,) = _weights(seed + 1, (classes, 2 * width))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1], name="c2"),
        helper.make_node("GlobalAveragePool", ["c"], ["e"]),
        helper.make_node("Flatten", ["e"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    return _model(
        nodes,
        [x_info()],
        [y_info(rank=2)],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(fc * 4, "fc"),
        ],
    )
