"""Probe inputs read integer inputs as the graph does (issue 24.3): token ids where 0 is
padding and length inputs exercise the kernels, so levels are checked on real work and
the budget is what was asked."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnx_selenc
from onnx_selenc._select.liveness import _random_feeds
from onnx_selenc._select.probe import Probe
from onnx_selenc._select.probe_inputs import IntegerRange, integer_ranges
from tests.tiny_models import _model, _weights

VOCAB = 50


def token_cnn(seed: int = 30, dim: int = 8, out: int = 16) -> onnx.ModelProto:
    """Token ids -> embedding (row 0, the padding id, is zero) -> Conv1d."""
    emb, w = _weights(seed, (VOCAB, dim), (out, dim, 3))
    emb[0] = 0.0
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [None, "T"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, out, "T"])
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),
        helper.make_node("Transpose", ["e"], ["et"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["et", "w"], ["y"], pads=[1, 1], name="conv"),
    ]
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w, "w")]
    return _model(nodes, [ids], [y], inits)


def length_cnn(seed: int = 31, c: int = 4, out: int = 16) -> onnx.ModelProto:
    """Conv1d whose output positions at or past ``length`` are zeroed (Range + Less +
    Where, as sequence models mask padding)."""
    (w,) = _weights(seed, (out, c, 3))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, "T"])
    length = helper.make_tensor_value_info("length", TensorProto.INT64, [None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, out, "T"])
    consts = {"zero": 0, "one": 1, "two": 2, "axis0": [0], "axis1": [1]}
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in consts.items()]
    inits += [numpy_helper.from_array(np.array(0, np.float32), "fzero")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1], name="conv"),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["t"], axis=0),
        helper.make_node("Range", ["zero", "t", "one"], ["pos"]),
        helper.make_node("Unsqueeze", ["pos", "axis0"], ["pos2"]),
        helper.make_node("Unsqueeze", ["length", "axis1"], ["len2"]),
        helper.make_node("Less", ["pos2", "len2"], ["keep"]),
        helper.make_node("Unsqueeze", ["keep", "axis1"], ["keep3"]),
        helper.make_node("Where", ["keep3", "c", "fzero"], ["y"]),
    ]
    return _model(nodes, [x, length], [y], [*inits, numpy_helper.from_array(w, "w")])


def _real_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs as a user would give them: ids with trailing padding, lengths up to T."""
    rng = np.random.default_rng(5)
    if model.graph.input[0].name == "ids":
        ids = rng.integers(1, VOCAB, size=(4, 12))
        ids[:, 9:] = 0
        return {"ids": ids}
    x = rng.standard_normal((4, 4, 12)).astype(np.float32)
    return {"x": x, "length": np.array([3, 12, 7, 1], np.int64)}


def _levels_on_real_inputs(model: onnx.ModelProto, tmp_path: Path, budget: float) -> None:
    plain_path, out, key = tmp_path / "plain.onnx", tmp_path / "enc.onnx", tmp_path / "o.key"
    onnx.save(model, plain_path)
    options = onnx_selenc.EncryptOptions(levels=3, budget=budget, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = onnx_selenc.encrypt(plain_path, out, key_file=key, options=options)
    assert [str(w.message) for w in caught] == []
    # The budget asked, to within one kernel (no growth).
    (weight,) = [t for t in model.graph.initializer if t.name == "w"]
    kernel = int(np.prod(weight.dims[2:]))
    assert result.encrypted_weights <= round(budget * result.conv_weights) + kernel
    feeds = _real_inputs(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    plain = ort.InferenceSession(model.SerializeToString(), so).run(None, feeds)[0]
    public = ort.InferenceSession(str(out), so).run(None, feeds)[0]
    outputs = [public]
    for level in (1, 2, 3):
        session = onnx_selenc.load_session(out, key=key, level=level)
        outputs.append(session.run(None, feeds)[0])
    for below, above in itertools.pairwise(outputs):
        assert not np.array_equal(below, above)
    np.testing.assert_array_equal(outputs[-1], plain)


def test_token_ids_with_padding_zero_give_distinct_levels_at_the_budget(tmp_path: Path) -> None:
    _levels_on_real_inputs(token_cnn(), tmp_path, budget=0.1)


def test_a_length_input_gives_distinct_levels_at_the_budget(tmp_path: Path) -> None:
    _levels_on_real_inputs(length_cnn(), tmp_path, budget=0.1)


def test_integer_ranges_follow_what_the_graph_does() -> None:
    assert integer_ranges(token_cnn()) == {"ids": IntegerRange(1, VOCAB)}
    assert integer_ranges(length_cnn()) == {"length": IntegerRange(1, None)}
    # One-hot depth from a constant, through a Cast; an input the graph does not
    # explain (a Reshape's shape) gets no range; indices into a table of unknown size
    # get none either (any guess could run past it).
    (w,) = _weights(32, (4, 3, 3))
    cls = helper.make_tensor_value_info("cls", TensorProto.INT32, [None])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [3])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [None])
    table = helper.make_tensor_value_info("table", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c"])
    nodes = [
        helper.make_node("Cast", ["cls"], ["cls64"], to=TensorProto.INT64),
        helper.make_node("OneHot", ["cls64", "depth", "onoff"], ["hot"], axis=-1),
        helper.make_node("Reshape", ["hot", "shape"], ["x"]),
        helper.make_node("Gather", ["table", "idx"], ["g"]),
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("ReduceSum", ["g"], ["gs"], keepdims=0),
        helper.make_node("Add", ["c", "gs"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(7, np.int64), "depth"),
        numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "onoff"),
        numpy_helper.from_array(w, "w"),
    ]
    model = _model(nodes, [cls, shape, idx, table], [y], inits)
    assert integer_ranges(model) == {"cls": IntegerRange(1, 7)}


def test_probe_falls_back_to_zeros_where_the_inferred_values_do_not_run() -> None:
    """An input compared as a length that also shapes a Reshape: lengths make the
    Reshape fail, zeros (copy the dimension) run, as the probe always did."""
    (w,) = _weights(33, (4, 3, 3))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c"])
    nodes = [
        helper.make_node("Reshape", ["x", "n"], ["xr"]),
        helper.make_node("Conv", ["xr", "w"], ["c"]),
        helper.make_node("Less", ["n", "n"], ["flag"]),
        helper.make_node("Cast", ["flag"], ["flagf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["flagf"], ["s"], keepdims=0),
        helper.make_node("Add", ["c", "s"], ["y"]),
    ]
    model = _model(nodes, [x, n], [y], [numpy_helper.from_array(w, "w")])
    assert integer_ranges(model) == {"n": IntegerRange(1, None)}
    probe = Probe(model, [])
    feeds = _random_feeds(probe, integer_ranges(model))
    assert feeds is not None
    np.testing.assert_array_equal(feeds["n"], np.zeros(3, np.int64))
