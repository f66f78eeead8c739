"""Graph walk: every place a conv weight can live is found; the rest is reported."""

from __future__ import annotations

from onnx_selenc._onnx.graph import walk_conv_weights
from tests import tiny_models as tm


def test_initializers_grouped_and_transpose() -> None:
    inv = walk_conv_weights(tm.cnn())
    by = inv.by_address()
    assert set(by) == {"w1", "w2", "w3", "w4"}
    assert by["w3"].shape == (16, 1, 3, 3) and by["w3"].n_kernels == 16
    assert by["w4"].consumers == ("ConvTranspose 'up'",)
    assert inv.total_weights == 8 * 27 + 16 * 72 + 16 * 9 + 16 * 16
    assert not inv.unsupported


def test_constant_nodes() -> None:
    inv = walk_conv_weights(tm.constant_nodes())
    assert [(w.address, w.storage) for w in inv.weights] == [("w1", "constant"), ("w2", "constant")]


def test_subgraphs_resolve_outer_and_local_weights() -> None:
    inv = walk_conv_weights(tm.if_subgraph())
    by = inv.by_address()
    assert set(by) == {"w_outer", "1:then_branch/w_then", "1:else_branch/w_else"}
    assert by["1:else_branch/w_else"].storage == "constant"
    assert by["1:then_branch/w_then"].graph_path == ("1:then_branch",)


def test_fp16_cast_and_quantized_pass_through() -> None:
    (w16,) = walk_conv_weights(tm.fp16_cast()).weights
    assert (w16.dtype, w16.via) == ("float16", ("Cast",))
    (wq,) = walk_conv_weights(tm.quantized()).weights
    assert (wq.dtype, wq.via) == ("int8", ("DequantizeLinear",))


def test_shared_weight_listed_once_with_both_consumers() -> None:
    (w,) = walk_conv_weights(tm.shared_weight()).weights
    assert w.consumers == ("Conv 'first'", "Conv 'second'")


def test_runtime_weight_reported_not_skipped_silently() -> None:
    inv = walk_conv_weights(tm.runtime_weight())
    assert [w.address for w in inv.weights] == ["w1"]
    (u,) = inv.unsupported
    assert u.node == "Conv 'computed'" and "computed at run time by Mul" in u.reason


def test_conv1d_kernels() -> None:
    (w,) = walk_conv_weights(tm.conv1d()).weights
    assert (w.n_kernels, w.kernel_size) == (18, 5)


def test_no_conv() -> None:
    inv = walk_conv_weights(tm.no_conv())
    assert not inv.weights and not inv.unsupported
