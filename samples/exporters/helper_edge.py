"""Hand-built ``onnx.helper`` models: the graph shapes that break naive conv walks.

Variants (each a valid model that ONNX Runtime runs; fixed seeds):

- ``names``: tensor and node names with ``/``, ``:``, spaces and non-ASCII letters
  (tf2onnx, caffe2 and hand-written habits).
- ``constant_renamed``: weights in Constant nodes whose value tensor is named
  differently from the node's output, or not named at all.
- ``if_outer``: convs inside both branches of an ``If`` read a main-graph initializer
  through ``Identity`` and ``Cast`` nodes that live in the enclosing graph.
- ``loop_outer``: a conv inside a ``Loop`` body reads an outer initializer through an
  outer ``Identity``.
- ``function``: convs inside model-local functions (``model.functions``), one taking
  its weight as a function input, one holding it in a Constant node of its body.
- ``sparse``: a conv weight stored in ``graph.sparse_initializer``.
- ``shared``: one weight read by two convs, plus an ordinary conv.
- ``constant_valued``: the only conv weight has one value everywhere (any kernel drawn
  from its own value distribution equals the original).
- ``single_conv``: one conv of 12 kernels (a few-kernel model: tiers must not collapse).
- ``mixed_unsupported``: one encryptable conv, one whose weight is a graph input and
  one whose weight is computed at run time (must be reported, not skipped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from samples.exporters._tiny import cli

OPSET = [helper.make_opsetid("", 17)]
F = TensorProto.FLOAT


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _vi(name: str, shape: list, elem: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _save(graph: onnx.GraphProto, out: Path, functions=(), opsets=OPSET, full=True) -> None:
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        functions=list(functions),
        producer_name="onnx.helper",
        producer_version=onnx.__version__,
    )
    # onnx's shape inference does not type sparse initializers: no full check for those
    onnx.checker.check_model(model, full_check=full)
    onnx.save(model, str(out))


def names(out: Path) -> None:
    rng = _rng()
    w1, w2 = "conv2d/kernel:0", "block 1/conv ü:weight"
    nodes = [
        helper.make_node(
            "Conv",
            ["input:0", w1, "conv2d/bias:0"],
            ["conv2d/Conv2D:0"],
            name="model/conv2d/Conv2D",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv2d/Conv2D:0"], ["relu 1:0"], name="model/relu 1"),
        helper.make_node("Conv", ["relu 1:0", w2], ["Ausgabe/größe:0"], name="block 1/卷积:0"),
    ]
    inits = [
        numpy_helper.from_array(_w(rng, 8, 3, 3, 3), w1),
        numpy_helper.from_array(np.zeros(8, np.float32) + 0.1, "conv2d/bias:0"),
        numpy_helper.from_array(_w(rng, 6, 8, 1, 1), w2),
    ]
    g = helper.make_graph(
        nodes,
        "names/graph:0",
        [_vi("input:0", ["N", 3, 16, 16])],
        [_vi("Ausgabe/größe:0", ["N", 6, 16, 16])],
        inits,
    )
    _save(g, out)


def constant_renamed(out: Path) -> None:
    rng = _rng()
    t1 = numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "a_value_name_unlike_the_output")
    t2 = numpy_helper.from_array(_w(rng, 4, 8, 3, 3), "")
    nodes = [
        helper.make_node("Constant", [], ["w_stem"], value=t1),
        helper.make_node("Constant", [], ["w_head"], value=t2),
        helper.make_node("Conv", ["x", "w_stem"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w_head"], ["y"]),
    ]
    g = helper.make_graph(
        nodes, "constant_renamed", [_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 4, 14, 14])]
    )
    _save(g, out)


def if_outer(out: Path) -> None:
    rng = _rng()

    def branch(name: str, weight: str, relu: bool) -> onnx.GraphProto:
        nodes = [helper.make_node("Conv", ["h", weight], [f"{name}_c"], pads=[1, 1, 1, 1])]
        nodes.append(helper.make_node("Relu" if relu else "Identity", [f"{name}_c"], [f"{name}_y"]))
        return helper.make_graph(nodes, name, [], [_vi(f"{name}_y", ["N", 8, 16, 16])])

    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["w_branch"], ["w_branch_id"]),
        helper.make_node("Cast", ["w_branch_id"], ["w_branch_cast"], to=F),
        helper.make_node("ReduceMean", ["h"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"],
                         then_branch=branch("then", "w_branch_cast", True),
                         else_branch=branch("else", "w_branch_id", False)),
    ]  # fmt: skip
    inits = [
        numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "w_stem"),
        numpy_helper.from_array(_w(rng, 8, 8, 3, 3), "w_branch"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    g = helper.make_graph(
        nodes, "if_outer", [_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 8, 16, 16])], inits
    )
    _save(g, out)


def loop_outer(out: Path) -> None:
    rng = _rng()
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Conv", ["state_in", "w_loop_id"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Tanh", ["c"], ["state_out"]),
        ],
        "loop_body",
        [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL),
         _vi("state_in", ["N", 8, 16, 16])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("state_out", ["N", 8, 16, 16])],
    )  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["w_loop"], ["w_loop_id"]),
        helper.make_node("Loop", ["trips", "", "h"], ["y"], body=body),
    ]
    inits = [
        numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "w_stem"),
        numpy_helper.from_array(_w(rng, 8, 8, 3, 3), "w_loop"),
        numpy_helper.from_array(np.array(3, np.int64), "trips"),
    ]
    g = helper.make_graph(
        nodes, "loop_outer", [_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 8, 16, 16])], inits
    )
    _save(g, out)


def function(out: Path) -> None:
    rng = _rng()
    conv_relu = helper.make_function(
        "local", "ConvRelu", ["X", "W", "B"], ["Y"],
        [helper.make_node("Conv", ["X", "W", "B"], ["C"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["C"], ["Y"])],
        opset_imports=OPSET,
    )  # fmt: skip
    fixed = helper.make_function(
        "local", "FixedHead", ["X"], ["Y"],
        [helper.make_node("Constant", [], ["W"],
                          value=numpy_helper.from_array(_w(rng, 4, 8, 1, 1), "head_w")),
         helper.make_node("Conv", ["X", "W"], ["Y"])],
        opset_imports=OPSET,
    )  # fmt: skip
    nodes = [
        helper.make_node("ConvRelu", ["x", "w1", "b1"], ["h1"], domain="local", name="block1"),
        helper.make_node("ConvRelu", ["h1", "w2", "b2"], ["h2"], domain="local", name="block2"),
        helper.make_node("FixedHead", ["h2"], ["y"], domain="local", name="head"),
    ]
    inits = [
        numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "w1"),
        numpy_helper.from_array(np.full(8, 0.05, np.float32), "b1"),
        numpy_helper.from_array(_w(rng, 8, 8, 3, 3), "w2"),
        numpy_helper.from_array(np.full(8, -0.05, np.float32), "b2"),
    ]
    g = helper.make_graph(
        nodes, "function", [_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 4, 16, 16])], inits
    )
    _save(g, out, [conv_relu, fixed], [*OPSET, helper.make_opsetid("local", 1)])


def sparse(out: Path) -> None:
    rng = _rng()
    dense = _w(rng, 8, 3, 3, 3)
    dense[np.abs(dense) < 0.15] = 0.0  # a pruned weight, stored sparse
    flat = dense.ravel()
    idx = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[idx], "w_sparse")
    indices = numpy_helper.from_array(idx, "w_sparse_indices")
    sp = helper.make_sparse_tensor(values, indices, list(dense.shape))
    nodes = [
        helper.make_node("Conv", ["x", "w_sparse"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w_dense"], ["y"]),
    ]
    g = helper.make_graph(nodes, "sparse", [_vi("x", ["N", 3, 16, 16])],
                          [_vi("y", ["N", 4, 14, 14])],
                          [numpy_helper.from_array(_w(rng, 4, 8, 3, 3), "w_dense")],
                          sparse_initializer=[sp])  # fmt: skip
    _save(g, out, full=False)


def shared(out: Path) -> None:
    rng = _rng()
    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["h"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Conv", ["h", "w_shared"], ["a"], pads=[1, 1, 1, 1], name="first"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w_shared"], ["y"], pads=[1, 1, 1, 1], name="second"),
    ]
    inits = [
        numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "w_stem"),
        numpy_helper.from_array(_w(rng, 8, 8, 3, 3), "w_shared"),
    ]
    g = helper.make_graph(
        nodes, "shared", [_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 8, 16, 16])], inits
    )
    _save(g, out)


def constant_valued(out: Path) -> None:
    nodes = [helper.make_node("Conv", ["x", "w_const"], ["y"], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(np.full((16, 3, 3, 3), 0.125, np.float32), "w_const")]
    g = helper.make_graph(
        nodes, "constant_valued", [_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 16, 16, 16])], inits
    )
    _save(g, out)


def single_conv(out: Path) -> None:
    rng = _rng()
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="only")]
    inits = [numpy_helper.from_array(_w(rng, 4, 3, 3, 3), "w")]
    g = helper.make_graph(
        nodes, "single_conv", [_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 4, 16, 16])], inits
    )
    _save(g, out)


def mixed_unsupported(out: Path) -> None:
    rng = _rng()
    nodes = [
        helper.make_node("Conv", ["x", "w_ok"], ["h"], pads=[1, 1, 1, 1], name="ok"),
        helper.make_node("Conv", ["h", "w_runtime"], ["a"], pads=[1, 1, 1, 1], name="from_input"),
        helper.make_node("Mul", ["w_base", "scale"], ["w_computed"], name="scale_weight"),
        helper.make_node("Conv", ["a", "w_computed"], ["y"], pads=[1, 1, 1, 1], name="computed"),
    ]
    inits = [
        numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "w_ok"),
        numpy_helper.from_array(_w(rng, 8, 8, 3, 3), "w_base"),
        numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
    ]
    g = helper.make_graph(nodes, "mixed_unsupported",
                          [_vi("x", ["N", 3, 16, 16]), _vi("w_runtime", [8, 8, 3, 3])],
                          [_vi("y", ["N", 8, 16, 16])], inits)  # fmt: skip
    _save(g, out)


VARIANTS = {
    f.__name__: f
    for f in (names, constant_renamed, if_outer, loop_outer, function, sparse, shared,
              constant_valued, single_conv, mixed_unsupported)
}  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(cli(VARIANTS))
