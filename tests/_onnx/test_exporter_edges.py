"""Graphs as other exporters write them: every one restores bit for bit, or is reported.

Each case goes through the public API end to end (encrypt to files, export the tier
keys, load sessions): the owner key restores outputs and conv weights bit for bit,
the public file runs and differs, and each tier differs from the next.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_selenc
from onnx_selenc import exceptions
from onnx_selenc._onnx.graph import split_address, tensor_address, walk_conv_weights
from tests import tiny_models as tm

NAMES = ["conv2d/kernel:0", "a:b", "with space", "ünï/cødé", "50%", "%2F/x", "/lead", "trail/"]


def _weights(seed: int, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32) for s in shapes]


def _model(nodes, inputs, outputs, inits=(), *, functions=(), opsets=(), sparse=()):
    graph = helper.make_graph(nodes, "edge", inputs, outputs, list(inits))
    graph.sparse_initializer.extend(sparse)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", tm.OPSET), *opsets],
        ir_version=tm.IR_VERSION,
        producer_name="edge-case-builder",
        functions=list(functions),
    )
    onnx.checker.check_model(model)
    return model


def _x(seed: int = 0, c: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((2, c, 8, 8)).astype(np.float32)}


def _run(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _differ(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def contract(
    model: onnx.ModelProto,
    tmp_path: Path,
    feeds: dict[str, np.ndarray],
    *,
    levels: int = 3,
    budget: float = 0.3,
    allow_budget_growth: bool = False,
) -> onnx_selenc.EncryptResult:
    """The product's promise on one model (what benchmarks.conformance runs at scale)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    plain_path = tmp_path / "plain.onnx"
    onnx.save(model, plain_path)
    out, owner = tmp_path / "enc.onnx", tmp_path / "owner.key"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = onnx_selenc.encrypt(
            plain_path, out, key_file=owner, levels=levels, budget=budget, seed=0,
            allow_budget_growth=allow_budget_growth,
        )  # fmt: skip
    plain = _run(model, feeds)
    assert _differ(_run(out, feeds), plain), "the public model behaves like the plain one"
    top = onnx_selenc.load_session(out, key=owner, providers=["CPUExecutionProvider"])
    assert not _differ(top.run(None, feeds), plain)
    restored = onnx_selenc.restore_model(out, key=owner).model
    inline = onnx_selenc._encrypt.files._inline_conv_functions(onnx.load(plain_path))
    for w in walk_conv_weights(inline).weights:
        want = onnx_selenc._onnx.tensors.read_array(
            onnx_selenc._onnx.tensors.weight_tensor(inline, w), None
        )
        got = onnx_selenc._onnx.tensors.read_array(
            onnx_selenc._onnx.tensors.weight_tensor(restored, w), None
        )
        assert got.tobytes() == want.tobytes(), w.address
    previous = _run(out, feeds)
    for m in range(1, levels + 1):
        key = owner if m == levels else tmp_path / f"tier{m}.key"
        if m < levels:
            onnx_selenc.export_key(owner, m, key)
        outputs = onnx_selenc.load_session(out, key=key, providers=["CPUExecutionProvider"]).run(
            None, feeds
        )
        assert _differ(outputs, previous), f"level {m} restores what level {m - 1} does"
        previous = outputs
    return result


# -- 1. names with '/', ':', spaces, unicode, '%' ------------------------------------


def test_keys_are_escaped_and_round_trip() -> None:
    for name in [*NAMES, ""]:
        for path in [(), ("3:then_branch",), ("1:body", "0:else_branch")]:
            key = tensor_address(path, name)
            assert split_address(key) == (path, name)
    assert tensor_address((), "w1") == "w1"  # plain names stay readable
    assert tensor_address((), "a/b") != tensor_address(("a",), "b")


@pytest.mark.parametrize("name", NAMES)
def test_main_graph_names(name: str, tmp_path: Path) -> None:
    w1, w2 = _weights(1, (8, 3, 3, 3), (4, 8, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", name], ["a"], pads=[1, 1, 1, 1], name=f"{name}/Conv"),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", f"{name}:1"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(w1, name), numpy_helper.from_array(w2, f"{name}:1")]
    contract(_model(nodes, [tm.x_info()], [tm.y_info()], inits), tmp_path, _x())


@pytest.mark.parametrize("name", NAMES)
def test_subgraph_names(name: str, tmp_path: Path) -> None:
    """A branch's own weight and an outer one, both with awkward names."""
    w_outer, w_then, w_else = _weights(2, (8, 3, 3, 3), (4, 8, 3, 3), (4, 8, 3, 3))
    then_g = helper.make_graph(
        [helper.make_node("Conv", ["a", name], ["t_out"], pads=[1, 1, 1, 1])],
        "then", [], [tm.y_info("t_out")], [numpy_helper.from_array(w_then, name)])  # fmt: skip
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], [f"{name}/c"],
                          value=numpy_helper.from_array(w_else, "other")),
         helper.make_node("Conv", ["a", f"{name}/c"], ["e_out"], pads=[1, 1, 1, 1])],
        "else", [], [tm.y_info("e_out")])  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", f"outer/{name}"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    model = _model(
        nodes, [tm.x_info(), cond], [tm.y_info()],
        [numpy_helper.from_array(w_outer, f"outer/{name}")],
    )  # fmt: skip
    (w,) = [w for w in walk_conv_weights(model).weights if w.name == name]
    assert w.graph_path == ("1:then_branch",)
    for branch in (True, False):
        contract(model, tmp_path / str(branch), {**_x(), "cond": np.array(branch)}, budget=0.5)


# -- 2. Constant value tensors named otherwise, or not named ---------------------------


@pytest.mark.parametrize("value_name", ["", "framework.param", "y"])
def test_constant_addressed_by_its_output(value_name: str, tmp_path: Path) -> None:
    w1, w2 = _weights(3, (8, 3, 3, 3), (4, 8, 1, 1))
    nodes = [
        helper.make_node("Constant", [], ["k1"], value=numpy_helper.from_array(w1, value_name)),
        helper.make_node("Constant", [], ["k2"], value=numpy_helper.from_array(w2)),
        helper.make_node("Conv", ["x", "k1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "k2"], ["y"]),
    ]
    model = _model(nodes, [tm.x_info()], [tm.y_info()])
    assert [(w.address, w.name) for w in walk_conv_weights(model).weights] == [
        ("k1", "k1"),
        ("k2", "k2"),
    ]
    contract(model, tmp_path, _x())


# -- 3. convs in model-local functions and contrib domains -----------------------------


def _conv_function() -> onnx.FunctionProto:
    """A function with a Conv on a weight it is given and one it holds as a Constant."""
    (w_inner,) = _weights(4, (4, 8, 1, 1))
    return helper.make_function(
        "pkg.blocks",
        "Block",
        ["inp", "weight"],
        ["out"],
        [
            helper.make_node("Conv", ["inp", "weight"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Constant", [], ["w_in"], value=numpy_helper.from_array(w_inner)),
            helper.make_node("Conv", ["r", "w_in"], ["out"]),
        ],
        [helper.make_opsetid("", tm.OPSET)],
    )


def test_convs_in_local_functions_are_inlined_and_encrypted(tmp_path: Path) -> None:
    w_a, w_b = _weights(5, (8, 3, 3, 3), (8, 3, 3, 3))
    nodes = [
        helper.make_node("Block", ["x", "wa"], ["a"], domain="pkg.blocks", name="first"),
        helper.make_node("Block", ["x", "wb"], ["b"], domain="pkg.blocks", name="second"),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    model = _model(
        nodes, [tm.x_info()], [tm.y_info()],
        [numpy_helper.from_array(w_a, "wa"), numpy_helper.from_array(w_b, "wb")],
        functions=[_conv_function()], opsets=[helper.make_opsetid("pkg.blocks", 1)],
    )  # fmt: skip
    # The walk alone does not see into functions: it says so rather than skip them.
    inv = walk_conv_weights(model)
    assert not inv.weights and len(inv.unsupported) == 2
    assert all("model-local function pkg.blocks:Block" in u.reason for u in inv.unsupported)
    result = contract(model, tmp_path, _x(), budget=0.5)
    # Both calls' weights and each call's copy of the inner constant: four tensors.
    assert result.conv_weights == 2 * (8 * 27 + 4 * 8)
    assert not result.unsupported


def test_fused_conv_from_the_runtime_optimiser(tmp_path: Path) -> None:
    w1, w2 = _weights(6, (8, 3, 3, 3), (4, 8, 3, 3))
    nodes = [
        helper.make_node("FusedConv", ["x", "w1"], ["a"], domain="com.microsoft",
                         activation="Relu", pads=[1, 1, 1, 1], name="fused"),
        helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    model = _model(
        nodes, [tm.x_info()], [tm.y_info()],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
        opsets=[helper.make_opsetid("com.microsoft", 1)],
    )  # fmt: skip
    by = walk_conv_weights(model).by_address()
    assert by["w1"].consumers == ("com.microsoft:FusedConv 'fused'",)
    contract(model, tmp_path, _x())


@pytest.mark.parametrize(
    ("domain", "op", "w_index"),
    [("com.microsoft", "NhwcConv", 1), ("com.microsoft", "QLinearConv", 3),
     ("com.microsoft", "ConvTransposeWithDynamicPads", 1), ("", "DeformConv", 1)],
)  # fmt: skip
def test_documented_conv_like_ops_are_candidates(domain: str, op: str, w_index: int) -> None:
    (w,) = _weights(7, (8, 3, 3, 3))
    inputs = [f"in{i}" for i in range(w_index)] + ["w"]
    node = helper.make_node(op, inputs, ["y"], domain=domain, name="n")
    graph = helper.make_graph([node], "g", [], [], [numpy_helper.from_array(w, "w")])
    inv = walk_conv_weights(helper.make_model(graph))
    assert [x.address for x in inv.weights] == ["w"] and not inv.unsupported


def test_unknown_conv_like_ops_are_reported() -> None:
    (w,) = _weights(8, (8, 3, 3, 3))
    nodes = [
        helper.make_node("MyConv2D", ["x", "w"], ["a"], domain="vendor.ops", name="custom"),
        helper.make_node("Conv", ["x", "w"], ["y"], domain="com.microsoft.nchwc", name="nchwc"),
    ]
    graph = helper.make_graph(nodes, "g", [], [], [numpy_helper.from_array(w, "w")])
    inv = walk_conv_weights(helper.make_model(graph))
    assert not inv.weights
    assert [u.node for u in inv.unsupported] == [
        "vendor.ops:MyConv2D 'custom'",
        "com.microsoft.nchwc:Conv 'nchwc'",
    ]
    assert all("weight layout" in u.reason for u in inv.unsupported)


# -- 4. weights through the enclosing graph, sparse weights ----------------------------


@pytest.mark.parametrize("op", ["Identity", "Cast"])
def test_branch_reads_outer_weight_through_identity_or_cast(op: str, tmp_path: Path) -> None:
    w0, w1 = _weights(9, (8, 3, 3, 3), (4, 8, 3, 3))
    kwargs = {"to": TensorProto.FLOAT} if op == "Cast" else {}
    then_g = helper.make_graph(
        [helper.make_node("Conv", ["a", "w1_view"], ["t_out"], pads=[1, 1, 1, 1], name="t")],
        "then", [], [tm.y_info("t_out")])  # fmt: skip
    else_g = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["e_out"])], "else", [], [tm.y_info("e_out")]
    )
    source = w1.astype(np.float16) if op == "Cast" else w1
    nodes = [
        helper.make_node(op, ["w1"], ["w1_view"], **kwargs),
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    model = _model(
        nodes, [tm.x_info(), cond], [tm.y_info()],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(source, "w1")],
    )  # fmt: skip
    inv = walk_conv_weights(model)
    assert not inv.unsupported
    (w,) = [w for w in inv.weights if w.address == "w1"]
    assert w.via == (op,) and w.graph_path == () and w.consumer_paths == (("2:then_branch",),)
    assert not w.in_main_graph
    contract(model, tmp_path, {**_x(), "cond": np.array(True)}, budget=0.5)


def test_sparse_weight_is_reported_with_its_reason() -> None:
    (w,) = _weights(10, (4, 3, 3, 3))
    dense = numpy_helper.from_array(w.ravel(), "ws")
    sparse = helper.make_sparse_tensor(
        dense, numpy_helper.from_array(np.arange(w.size, dtype=np.int64), "ws_idx"), w.shape
    )
    nodes = [helper.make_node("Conv", ["x", "ws"], ["y"], pads=[1, 1, 1, 1], name="c")]
    model = _model(nodes, [tm.x_info()], [tm.y_info()], sparse=[sparse])
    inv = walk_conv_weights(model)
    assert not inv.weights
    (u,) = inv.unsupported
    assert "sparse" in u.reason and "enclosing" not in u.reason


def test_loop_carried_weight_reason_is_accurate() -> None:
    body = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_carried"], ["o"], name="in_loop"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["w_carried"], ["w_next"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("w_carried", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("w_next", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )  # fmt: skip
    node = helper.make_node("Loop", ["n", "c", "w0"], ["w_final", "ys"], body=body)
    inv = walk_conv_weights(helper.make_model(helper.make_graph([node], "g", [], [])))
    (u,) = inv.unsupported
    assert "input of subgraph 0:body" in u.reason


# -- 5. tiers never collapse -----------------------------------------------------------


def test_single_conv_single_kernel_budget_still_gives_distinct_tiers(tmp_path: Path) -> None:
    (w,) = _weights(11, (4, 3, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    model = _model(nodes, [tm.x_info()], [tm.y_info()], [numpy_helper.from_array(w, "w")])
    onnx.save(model, tmp_path / "p.onnx")
    with pytest.warns(exceptions.LevelCountWarning, match="every level restores"):
        onnx_selenc.encrypt(
            tmp_path / "p.onnx", tmp_path / "e.onnx", key_file=tmp_path / "k", levels=3,
            budget=0.001,
        )  # fmt: skip
    contract(model, tmp_path / "c", _x(), budget=0.001)


def test_more_levels_than_kernels_is_refused_before_writing(tmp_path: Path) -> None:
    (w,) = _weights(12, (2, 1, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])
    model = _model(nodes, [x], [tm.y_info()], [numpy_helper.from_array(w, "w")])
    onnx.save(model, tmp_path / "p.onnx")
    with pytest.raises(ValueError, match="3 distinct levels need at least 3"):
        onnx_selenc.encrypt(tmp_path / "p.onnx", tmp_path / "e.onnx", key_file=tmp_path / "k",
                            levels=3)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]


def test_levels_split_over_the_whole_model(tmp_path: Path) -> None:
    """One or two kernels per layer: level 1 gets about 1/M of them, not every layer's top."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = onnx_selenc._encrypt.files.encrypt_model(tm.cnn(), levels=4, budget=0.02, seed=0)
    per_level = np.bincount(
        np.concatenate([layer.restore_level for layer in enc.selection.layers]), minlength=5
    )[1:]
    total = int(per_level.sum())
    assert len(enc.selection.layers) >= 3 and total >= 4
    assert per_level.min() >= 1
    assert per_level.max() <= int(np.ceil(total / 4)) + 1


# -- 6. replacements always differ from the originals ----------------------------------


def test_pruned_positions_still_change(tmp_path: Path) -> None:
    """Every kernel shares 0 at its corner positions (pruned): replacements differ anyway."""
    w1, w2 = _weights(13, (8, 3, 3, 3), (4, 8, 3, 3))
    w1[:, :, 0, :] = 0.0
    w2[:, :, :, 0] = 0.5
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    model = _model(
        nodes, [tm.x_info()], [tm.y_info()],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = onnx_selenc._encrypt.files.encrypt_model(onnx.load_from_string(
            model.SerializeToString()), levels=2, budget=0.5, seed=0)  # fmt: skip
    for record in enc.masked:
        assert not np.any(np.all(record.replacements == record.originals, axis=1))
    contract(model, tmp_path, _x(), budget=0.5, levels=2)


def test_constant_valued_layer_is_reported_not_encrypted(tmp_path: Path) -> None:
    w1, w2 = _weights(14, (8, 3, 3, 3), (4, 8, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", "ones"], ["a"], pads=[1, 1, 1, 1], name="flat"),
        helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1, 1, 1], name="real"),
    ]
    model = _model(
        nodes, [tm.x_info()], [tm.y_info()],
        [numpy_helper.from_array(np.ones_like(w1), "ones"), numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    result = contract(model, tmp_path, _x(), budget=0.5)
    assert [layer.address for layer in result.layers] == ["w2"]
    (u,) = result.unsupported
    assert u.node == "Conv 'flat'" and "every value" in u.reason


def test_only_constant_layers_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("Conv", ["x", "z"], ["y"], pads=[1, 1, 1, 1])]
    model = _model(
        nodes,
        [tm.x_info()],
        [tm.y_info()],
        [numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "z")],
    )
    onnx.save(model, tmp_path / "p.onnx")
    with pytest.raises(exceptions.UnsupportedModel, match="no conv weight can be masked"):
        onnx_selenc.encrypt(tmp_path / "p.onnx", tmp_path / "e.onnx", key_file=tmp_path / "k")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]


# -- self-check ------------------------------------------------------------------------


def test_self_check_catches_an_output_that_would_not_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payload that addresses the wrong tensor is caught before anything is written."""
    from onnx_selenc._crypto import bundle as _bundle

    real = _bundle.encode_payload

    def drop_a_kernel(patches):
        patches = list(patches)
        first = patches[0]
        patches[0] = _bundle.TensorPatch(
            first.address, first.dtype, first.shape, first.kernels[1:], first.values[1:]
        )
        return real(patches)

    monkeypatch.setattr(_bundle, "encode_payload", drop_a_kernel)
    onnx.save(tm.cnn(), tmp_path / "p.onnx")
    with pytest.raises(exceptions.SelfCheckFailed, match=r"bug in onnx-selenc.*onnx-selenc-tests"):
        onnx_selenc.encrypt(tmp_path / "p.onnx", tmp_path / "e.onnx", key_file=tmp_path / "k",
                            budget=0.2)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]


def test_self_check_failure_has_its_own_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from onnx_selenc._cli import commands as _cli
    from onnx_selenc._load import restore as _restore

    monkeypatch.setattr(_restore, "split_address", lambda key: ((), key + "-wrong"))
    onnx.save(tm.cnn(), tmp_path / "p.onnx")
    code = _cli.main(["encrypt", str(tmp_path / "p.onnx"), "-o", str(tmp_path / "e.onnx"),
                      "--keys", str(tmp_path / "k"), "--budget", "0.2"])  # fmt: skip
    assert code == 10
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: SelfCheckFailed: bug in onnx-selenc")
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]


def test_inspect_lists_function_convs_as_encrypt_sees_them(tmp_path: Path) -> None:
    (w_a,) = _weights(15, (8, 3, 3, 3))
    nodes = [helper.make_node("Block", ["x", "wa"], ["y"], domain="pkg.blocks")]
    model = _model(
        nodes, [tm.x_info()], [tm.y_info()], [numpy_helper.from_array(w_a, "wa")],
        functions=[_conv_function()], opsets=[helper.make_opsetid("pkg.blocks", 1)],
    )  # fmt: skip
    onnx.save(model, tmp_path / "m.onnx")
    report = onnx_selenc.inspect_model(tmp_path / "m.onnx")
    assert report.inlined_functions == ("pkg.blocks:Block",)
    assert len(report.weights) == 2 and not report.unsupported
    assert "pkg.blocks:Block" in onnx_selenc._deploy.inspect.format_report(report)


def test_external_data_output_is_checked_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With external data the written files are not the checked bytes: they are checked
    too, under their temporary names, and a corrupted write leaves nothing behind."""
    from onnx_selenc._onnx import modelio as _modelio

    onnx.save(tm.cnn(), tmp_path / "p.onnx")
    result = onnx_selenc.encrypt(tmp_path / "p.onnx", tmp_path / "ok.onnx", budget=0.2,
                                 key_file=tmp_path / "ok.key", external_data=True)  # fmt: skip
    assert [p.name for p in result.model_files] == ["ok.onnx", "ok.onnx.data"]
    real = _modelio._save_external

    def flip_a_byte(model, path, data_name):
        wrote = real(model, path, data_name)
        data = path.parent / data_name
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 1
        data.write_bytes(bytes(raw))
        return wrote

    monkeypatch.setattr(_modelio, "_save_external", flip_a_byte)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(exceptions.SelfCheckFailed, match="written encrypted model"):
        onnx_selenc.encrypt(tmp_path / "p.onnx", tmp_path / "e.onnx", budget=0.2,
                            key_file=tmp_path / "k", external_data=True)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_malformed_plain_model_is_a_format_error(tmp_path: Path) -> None:
    """A weight whose bytes do not fit its dims: FormatError, nothing written."""
    model = tm.cnn()
    init = next(i for i in model.graph.initializer if i.name == "w2")
    init.raw_data = init.raw_data[:-4]
    (tmp_path / "p.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(exceptions.FormatError, match="'w2' is malformed"):
        onnx_selenc.encrypt(tmp_path / "p.onnx", tmp_path / "e.onnx", key_file=tmp_path / "k")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]


def test_model_onnx_runtime_cannot_load_still_encrypts(tmp_path: Path) -> None:
    """A custom operator (its library not registered): the public-session part of the
    self-check is skipped with a warning, not reported as a bug; the weights restore."""
    w1, w2 = _weights(16, (8, 3, 3, 3), (4, 8, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Swish", ["a"], ["s"], domain="vendor.custom"),
        helper.make_node("Conv", ["s", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    model = _model(
        nodes, [tm.x_info()], [tm.y_info()],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
        opsets=[helper.make_opsetid("vendor.custom", 1)],
    )  # fmt: skip
    onnx.save(model, tmp_path / "p.onnx")
    with pytest.warns(UserWarning, match="does not load the plain model either"):
        onnx_selenc.encrypt(tmp_path / "p.onnx", tmp_path / "e.onnx", key_file=tmp_path / "k",
                            budget=0.3, levels=2)  # fmt: skip
    restored = onnx_selenc.restore_model(tmp_path / "e.onnx", key=tmp_path / "k").model
    for name, values in (("w1", w1), ("w2", w2)):
        got = next(i for i in restored.graph.initializer if i.name == name)
        assert numpy_helper.to_array(got).tobytes() == values.tobytes()


@pytest.mark.parametrize("shape", [(1, 1, 7), (1, 1, 1, 32), (1, 3, 3, 3)])
def test_single_kernel_layers_are_masked(shape: tuple[int, ...], tmp_path: Path) -> None:
    """A weight with one kernel (silero's [1,1,7] filter, basic-pitch's [1,1,1,256] row):
    its replacement is drawn from the spread across its positions (was refused as if
    every value were equal)."""
    rank = len(shape) - 2
    (w_one,) = _weights(17, shape)
    (w_big,) = _weights(18, (8, shape[0], *shape[2:]))
    kernel = list(shape[2:])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, shape[1], *[80] * rank])
    nodes = [
        helper.make_node("Conv", ["x", "one"], ["a"], kernel_shape=kernel),
        helper.make_node("Conv", ["a", "big"], ["y"], kernel_shape=kernel),
    ]
    model = _model(
        nodes, [x], [tm.y_info(rank=len(shape))],
        [numpy_helper.from_array(w_one, "one"), numpy_helper.from_array(w_big, "big")],
    )  # fmt: skip
    feeds = {"x": np.random.default_rng(0).standard_normal((1, shape[1], *[80] * rank))}
    result = contract(model, tmp_path, {"x": feeds["x"].astype(np.float32)}, levels=2, budget=0.5)
    assert "one" in [layer.address for layer in result.layers]


def test_levels_change_the_outputs_when_most_kernels_feed_dead_channels(tmp_path: Path) -> None:
    """The largest kernels feed channels a mask zeroes (as openwakeword's mel filterbank
    does to most STFT bins): data-free scores pick them, and without forward passes the
    tiers would all equal the owner's model. Encrypt encrypts more until each level
    changes the outputs, and says so."""
    (w1,) = _weights(19, (16, 3, 3, 3))
    # Dead channels hold the largest kernels, and the live ones are all unlike in size,
    # so the data-free ranking is the same whatever the BLAS rounds.
    w1[8:] *= 10.0
    w1[:8] *= np.linspace(1.0, 2.0, 8, dtype=np.float32)[:, None, None, None]
    (w2,) = _weights(20, (4, 16, 1, 1))
    mask = np.ones((1, 16, 1, 1), np.float32)
    mask[0, 8:] = 0.0
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["a", "mask"], ["live"]),
        helper.make_node("Conv", ["live", "w2"], ["y"]),
    ]
    model = _model(
        nodes, [tm.x_info()], [tm.y_info()],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(mask, "mask"),
         numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    with pytest.warns(exceptions.LevelCountWarning, match="change nothing"):
        onnx_selenc._encrypt.files.encrypt_model(
            onnx.load_from_string(model.SerializeToString()), levels=3, budget=0.02, seed=0,
            layers=["w1"], allow_budget_growth=True,
        )  # fmt: skip
    contract(model, tmp_path, _x(), levels=3, budget=0.02, allow_budget_growth=True)


def test_live_cuts_move_past_kernels_that_change_nothing() -> None:
    from onnx_selenc._select.liveness import _live_cuts

    live = {3, 7, 9}  # restoring the k-th kernel (1-based) changes the outputs

    def differ(a: int, b: int) -> bool:
        return any(a < k <= b for k in live)

    assert _live_cuts([2, 4], 10, differ) == ([3, 7], [])
    assert _live_cuts([1, 2], 10, differ) == ([3, 7], [])
    # The top level's kernels (10) change nothing: the cuts below move back.
    cuts, stuck = _live_cuts([8, 9], 10, differ)
    assert not stuck and all(differ(a, b) for a, b in itertools.pairwise([0, *cuts, 10]))
    # Three live kernels cannot make four levels: said, not hidden.
    assert _live_cuts([2, 4, 6], 10, differ)[1]
