"""The refusal of tensors that name a file: the same answer with the listed tensors and
the digest's skeleton (the loader's shortcut) as with the walk over every tensor."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_selenc._crypto.digest import skeleton_bytes
from onnx_selenc._load.handover import (
    file_references,
    mark_in_memory,
    refuse_file_references,
)
from onnx_selenc._onnx.tensors import iter_tensors
from onnx_selenc.exceptions import FormatError


def _external(tensor: onnx.TensorProto, location: str = "w.bin") -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)


def _model(
    *, in_function: bool = False, odd_attribute: bool = False, function_branch: bool = False
) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    if odd_attribute:  # a tensor in a FLOAT attribute: outside iter_tensors
        node = helper.make_node("Add", ["y", "w"], ["z"])
        attr = node.attribute.add(name="alpha", type=onnx.AttributeProto.FLOAT, f=1.0)
        attr.t.CopyFrom(numpy_helper.from_array(np.ones(2, np.float32), "odd"))
        _external(attr.t)
        nodes.append(node)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])],
        [w],
    )
    functions = []
    if in_function:
        value = numpy_helper.from_array(np.ones(2, np.float32), "c")
        _external(value)
        body = helper.make_node("Constant", [], ["c"], value=value)
        functions.append(helper.make_function("local", "F", [], ["c"], [body], []))
    if function_branch:  # an initializer of an If branch inside a local function
        init = numpy_helper.from_array(np.ones(2, np.float32), "b")
        _external(init)
        branch = helper.make_graph(
            [helper.make_node("Identity", ["b"], ["o"])], "branch", [],
            [helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [2])], [init],
        )  # fmt: skip
        body = helper.make_node("If", ["cond"], ["c"], then_branch=branch, else_branch=branch)
        functions.append(helper.make_function("local", "G", ["cond"], ["c"], [body], []))
    return helper.make_model(graph, functions=functions)


def _shortcut(model: onnx.ModelProto) -> tuple[list[onnx.TensorProto], bytes]:
    return list(iter_tensors(model.graph)), skeleton_bytes(model, frozenset(), rebuild=False)


@pytest.mark.parametrize("where", ["function", "attribute", "function branch"])
def test_a_file_outside_the_listed_tensors_is_refused_either_way(where: str) -> None:
    model = _model(
        in_function=where == "function",
        odd_attribute=where == "attribute",
        function_branch=where == "function branch",
    )
    listed, skeleton = _shortcut(model)
    # The walk lists main-graph tensors twice; the loader reads only the first name.
    assert file_references(model, listed, skeleton)[:1] == file_references(model)[:1] != []
    with pytest.raises(FormatError, match="external file"):
        refuse_file_references(model, listed, skeleton)


def test_listed_tensors_are_checked_as_they_are_now() -> None:
    model = _model()
    listed, skeleton = _shortcut(model)
    assert file_references(model, listed, skeleton) == []
    # Marked after the skeleton was taken, as the loader marks its hand-over.
    mark_in_memory(model.graph.initializer[0], 16)
    assert file_references(model, listed, skeleton) == []
    _external(model.graph.initializer[0])  # a file location now
    assert file_references(model, listed, skeleton) == file_references(model)[:1] == ["w"]
    with pytest.raises(FormatError, match="'w'"):
        refuse_file_references(model, listed, skeleton)
