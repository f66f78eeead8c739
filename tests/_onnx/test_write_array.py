"""write_array keeps how a tensor is stored (issue 24.1): the field holding its values,
its doc_string and an explicit data_location; only the values change."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_selenc._onnx.tensors import every_tensor, read_array, write_array
from tests import tiny_models as tm


def _float_data(values: np.ndarray) -> onnx.TensorProto:
    t = helper.make_tensor("w", TensorProto.FLOAT, values.shape, values.ravel().tolist())
    t.doc_string = "kept"
    t.data_location = TensorProto.DEFAULT
    return t


def _fp16_bits(values: np.ndarray) -> onnx.TensorProto:
    t = onnx.TensorProto(name="h", data_type=TensorProto.FLOAT16, dims=values.shape)
    t.int32_data.extend(values.view(np.uint16).ravel().astype(np.int32).tolist())
    return t


def _int8(values: np.ndarray) -> onnx.TensorProto:
    t = onnx.TensorProto(name="q", data_type=TensorProto.INT8, dims=values.shape)
    t.int32_data.extend(values.ravel().astype(np.int32).tolist())
    return t


def _double(values: np.ndarray) -> onnx.TensorProto:
    t = onnx.TensorProto(name="d", data_type=TensorProto.DOUBLE, dims=values.shape)
    t.double_data.extend(values.ravel().tolist())
    return t


VALUES = np.linspace(-1, 1, 24).reshape(4, 2, 3)
CASES = {
    "float_data": (_float_data, VALUES.astype(np.float32), "float_data"),
    "fp16 in int32_data": (_fp16_bits, VALUES.astype(np.float16), "int32_data"),
    "int8 in int32_data": (_int8, (VALUES * 100).astype(np.int8), "int32_data"),
    "double_data": (_double, VALUES.astype(np.float64), "double_data"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_typed_field_is_kept_and_the_bytes_come_back(case: str) -> None:
    make, values, field = CASES[case]
    tensor = make(values)
    before = tensor.SerializeToString()
    assert np.array_equal(read_array(tensor, None), values)
    changed = values[::-1].copy()
    write_array(tensor, changed)
    assert len(getattr(tensor, field)) == values.size
    assert not tensor.HasField("raw_data")
    assert np.array_equal(read_array(tensor, None), changed)
    write_array(tensor, values)
    assert tensor.SerializeToString() == before


def test_raw_data_stays_raw_and_keeps_the_other_fields() -> None:
    values = VALUES.astype(np.float32)
    tensor = numpy_helper.from_array(values, "w")
    tensor.doc_string = "doc"
    tensor.data_location = TensorProto.DEFAULT
    before = tensor.SerializeToString()
    write_array(tensor, values + 1)
    assert tensor.HasField("raw_data") and tensor.doc_string == "doc"
    assert tensor.HasField("data_location")
    write_array(tensor, values)
    assert tensor.SerializeToString() == before


def test_an_external_tensor_becomes_inline() -> None:
    values = VALUES.astype(np.float32)
    tensor = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=values.shape)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="w.bin")
    write_array(tensor, values)
    assert not tensor.external_data and tensor.data_location == TensorProto.DEFAULT
    assert np.array_equal(read_array(tensor, None), values)


def test_values_of_another_type_replace_the_typed_field() -> None:
    tensor = _float_data(VALUES.astype(np.float32))
    write_array(tensor, VALUES.astype(np.float16))
    assert tensor.data_type == TensorProto.FLOAT16 and not tensor.float_data
    assert np.array_equal(read_array(tensor, None), VALUES.astype(np.float16))


def test_every_tensor_walks_graphs_sparse_tensors_and_functions() -> None:
    model = tm.if_subgraph()
    values = np.ones(3, np.float32)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(values, "sv"), numpy_helper.from_array(np.arange(3), "si"), [5]
    )
    model.graph.sparse_initializer.append(sparse)
    names = [t.name for t in every_tensor(model)]
    inner = [t.name for n in model.graph.node for a in n.attribute if a.g.name for t in (
        *a.g.initializer, *(x.t for m in a.g.node for x in m.attribute if x.HasField("t"))
    )]  # fmt: skip
    assert {"sv", "si"} <= set(names)
    assert set(inner) <= set(names)
    assert names == [t.name for t in every_tensor(model)]  # the same order every time
