"""Keyed wiring (EncryptOptions(wiring=True)): which convs are wired, and that the
public file is wired and masked, level 1 undoes the wiring exactly, the top level is
the original bit for bit, on every load path, after rekey too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_selenc import EncryptOptions, encrypt, inspect_model, load_session, rekey, restore_model
from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto.payload import decode_payload, encode_payload, wiring_patch
from onnx_selenc._onnx.channels import plan_wiring
from onnx_selenc._onnx.graph import walk_conv_weights
from onnx_selenc._select.wiring import channel_permutation
from onnx_selenc.exceptions import FormatError
from tests.tiny_models import IR_VERSION, OPSET


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def wiring_zoo(seed: int = 0) -> onnx.ModelProto:
    """Every case the planner tells apart: conv+bias+BN, grouped, residual, depthwise,
    a head that reaches an output, a weight shared by two convs."""
    rng = np.random.default_rng(seed)
    c = 8
    inits = {
        "w1": _w(rng, c, 3, 3, 3),
        "b1": _w(rng, c, 1)[:, 0],
        "bn_s": (1 + 0.1 * rng.standard_normal(c)).astype(np.float32),
        "bn_b": (0.1 * rng.standard_normal(c)).astype(np.float32),
        "bn_m": (0.1 * rng.standard_normal(c)).astype(np.float32),
        "bn_v": (1 + 0.1 * rng.random(c)).astype(np.float32),
        "w2": _w(rng, c, c // 2, 3, 3),  # group 2: 4 output channels per group
        "w3": _w(rng, c, c, 3, 3),
        "w4": _w(rng, c, 1, 3, 3),  # depthwise
        "w5": _w(rng, 2 * c, c, 1, 1),
        "w6": _w(rng, 4, c, 1, 1),  # a head: straight to an output
        "ws": _w(rng, c, c, 1, 1),  # shared by two convs
        "fc": (4 * _w(rng, 10, 2 * c)).astype(np.float32),
    }
    pad = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", **pad),
        helper.make_node(
            "BatchNormalization", ["a", "bn_s", "bn_b", "bn_m", "bn_v"], ["a_bn"], name="bn1"
        ),
        helper.make_node("Relu", ["a_bn"], ["a_r"]),
        helper.make_node("Conv", ["a_r", "w2"], ["b"], name="grouped", group=2, **pad),
        helper.make_node("Relu", ["b"], ["b_r"]),
        helper.make_node("Conv", ["b_r", "w3"], ["c"], name="inner", **pad),
        helper.make_node("Add", ["c", "b_r"], ["c_add"]),
        helper.make_node("Conv", ["c_add", "w4"], ["d"], name="dw", group=c, **pad),
        helper.make_node("Conv", ["d", "ws"], ["s1"], name="shared_a"),
        helper.make_node("Conv", ["s1", "ws"], ["s2"], name="shared_b"),
        helper.make_node("Conv", ["s2", "w5"], ["e"], name="widen"),
        helper.make_node("GlobalAveragePool", ["e"], ["e_p"]),
        helper.make_node("Flatten", ["e_p"], ["e_f"]),
        helper.make_node("Gemm", ["e_f", "fc"], ["y"], transB=1),
        helper.make_node("Conv", ["a_r", "w6"], ["z"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "zoo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 4, 8, 8]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


X = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)


def _run(model: onnx.ModelProto | ort.InferenceSession) -> list[np.ndarray]:
    session = (
        model
        if isinstance(model, ort.InferenceSession)
        else ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    )
    return session.run(None, {"x": X})


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_the_plan_wires_what_a_later_layer_mixes_and_says_why_not_elsewhere() -> None:
    model = wiring_zoo()
    plan = plan_wiring(model, walk_conv_weights(model))
    wired = {layer.node: layer for layer in plan.wired}
    assert set(wired) == {"Conv 'conv1'", "Conv 'grouped'", "Conv 'inner'", "Conv 'widen'"}
    assert wired["Conv 'conv1'"].companions == ("b1", "bn_s", "bn_b", "bn_m", "bn_v")
    assert wired["Conv 'grouped'"].group_size == 4
    reasons = {u.node: u.reason for u in plan.unwired}
    assert "depthwise" in reasons["Conv 'dw'"]
    assert "output" in reasons["Conv 'head'"]
    assert "shared by 2 convs" in next(r for n, r in reasons.items() if "ws" in n or "shared" in n)


def test_a_grouped_permutation_keeps_every_channel_in_its_group() -> None:
    perm = channel_permutation(12, 4, np.random.default_rng(0))
    assert sorted(perm) == list(range(12))
    assert all(set(perm[g * 4 : g * 4 + 4]) == set(range(g * 4, g * 4 + 4)) for g in range(3))


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The zoo encrypted twice with the same seed, wired and not."""
    d = tmp_path_factory.mktemp("wiring")
    onnx.save(wiring_zoo(), d / "plain.onnx")
    out = {"plain": d / "plain.onnx"}
    for wiring in (True, False):
        name = "wired" if wiring else "masked"
        encrypt(
            d / "plain.onnx",
            d / f"{name}.onnx",
            key_file=d / f"{name}.key",
            options=EncryptOptions(levels=3, budget=0.05, seed=0, wiring=wiring),
        )
        out[name], out[f"{name}_key"] = d / f"{name}.onnx", d / f"{name}.key"
    return out


def test_level_zero_is_wired_and_masked(encrypted: dict[str, Path]) -> None:
    wired, masked = (
        _weights(onnx.load(encrypted["wired"])),
        _weights(onnx.load(encrypted["masked"])),
    )
    plain = _weights(onnx.load(encrypted["plain"]))
    for name in ("w1", "b1", "bn_v", "w2", "w3", "w5"):
        assert not np.array_equal(wired[name], masked[name]), name
        # A permutation of the masked file's rows: the same rows, in another order.
        rows = lambda a: sorted(map(bytes, a.reshape(a.shape[0], -1)))  # noqa: E731
        assert rows(wired[name]) == rows(masked[name]), name
    for name in ("w4", "w6", "ws", "fc"):  # not wired: as the masked-only file has them
        assert np.array_equal(wired[name], masked[name]), name
    assert not np.array_equal(wired["bn_m"], plain["bn_m"])
    level0 = _run(onnx.load(encrypted["wired"]))
    assert not np.allclose(level0[0], _run(onnx.load(encrypted["masked"]))[0])


@pytest.mark.parametrize("level", [1, 2, 3])
def test_levels_above_zero_are_the_masked_only_levels(
    encrypted: dict[str, Path], level: int
) -> None:
    wired = restore_model(encrypted["wired"], key=encrypted["wired_key"], level=level).model
    masked = restore_model(encrypted["masked"], key=encrypted["masked_key"], level=level).model
    got, want = _weights(wired), _weights(masked)
    assert got.keys() == want.keys()
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)
    session = load_session(encrypted["wired"], key=encrypted["wired_key"], level=level)
    for a, b in zip(_run(session), _run(wired), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_top_level_is_the_original_bit_for_bit(encrypted: dict[str, Path]) -> None:
    top = restore_model(encrypted["wired"], key=encrypted["wired_key"]).model
    plain = _weights(onnx.load(encrypted["plain"]))
    assert {k: v.tobytes() for k, v in _weights(top).items()} == {
        k: v.tobytes() for k, v in plain.items()
    }
    for a, b in zip(_run(top), _run(onnx.load(encrypted["plain"])), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_manifest_names_the_wired_layers_and_inspect_shows_them(
    encrypted: dict[str, Path],
) -> None:
    manifest, _ = _bundle.read_bundle(onnx.load(encrypted["wired"]))
    assert manifest.selection["wiring"] == [
        "Conv 'conv1'",
        "Conv 'grouped'",
        "Conv 'inner'",
        "Conv 'widen'",
    ]
    text = str(inspect_model(encrypted["wired"]).as_dict())
    assert "conv1" in text and "wiring" in text
    manifest, _ = _bundle.read_bundle(onnx.load(encrypted["masked"]))
    assert "wiring" not in manifest.selection


def test_rekey_keeps_the_wiring(encrypted: dict[str, Path], tmp_path: Path) -> None:
    rekey(
        encrypted["wired"],
        tmp_path / "re.onnx",
        key_file=encrypted["wired_key"],
        new_key_file=tmp_path / "re.key",
    )
    manifest, _ = _bundle.read_bundle(onnx.load(tmp_path / "re.onnx"))
    assert len(manifest.selection["wiring"]) == 4
    top = restore_model(tmp_path / "re.onnx", key=tmp_path / "re.key").model
    plain = _weights(onnx.load(encrypted["plain"]))
    assert all(v.tobytes() == plain[k].tobytes() for k, v in _weights(top).items())
    one = restore_model(tmp_path / "re.onnx", key=tmp_path / "re.key", level=1).model
    want = restore_model(encrypted["wired"], key=encrypted["wired_key"], level=1).model
    assert all(v.tobytes() == _weights(want)[k].tobytes() for k, v in _weights(one).items())


def test_a_wiring_entry_round_trips_and_a_non_permutation_is_refused() -> None:
    order = np.array([2, 0, 1, 3], np.int64)
    patch = wiring_patch("w", "float32", (4, 2, 3, 3), order)
    (got,) = decode_payload(encode_payload([patch]))
    assert got.order is not None and np.array_equal(got.order, order)
    assert got.address == "w" and got.shape == (4, 2, 3, 3) and got.kernels.size == 0
    for bad in ([0, 0, 1, 3], [0, 1, 2, 4], [0, 1, 2]):
        raw = encode_payload([wiring_patch("w", "float32", (4, 2, 3, 3), np.array(bad))])
        with pytest.raises(FormatError):
            decode_payload(raw)


def test_calibrated_level_zero_is_measured_on_the_wired_file(tmp_path: Path) -> None:
    from onnx_selenc import CalibratedLevels, Calibration
    from tests.tiny_models import classifier

    onnx.save(classifier(width=16), tmp_path / "plain.onnx")
    x = np.random.default_rng(1).standard_normal((6, 3, 8, 8)).astype(np.float32)
    reports = {}
    for wiring in (False, True):
        result = encrypt(
            tmp_path / "plain.onnx",
            tmp_path / f"{wiring}.onnx",
            key_file=tmp_path / f"{wiring}.key",
            calibration=Calibration({"x": x}),  # under 8 samples: all of them are searched
            options=EncryptOptions(
                levels=2, budget=0.2, seed=0, wiring=wiring, split=CalibratedLevels((0.5, 1.0))
            ),
        )
        assert result.level_report is not None
        reports[wiring] = result.level_report
    assert reports[True].calibration[1:] == reports[False].calibration[1:]
    plain = ort.InferenceSession(str(tmp_path / "plain.onnx")).run(None, {"x": x})[0]
    public = ort.InferenceSession(str(tmp_path / "True.onnx")).run(None, {"x": x})[0]
    agreement = float(np.mean(plain.argmax(1) == public.argmax(1)))
    assert reports[True].calibration[0] == pytest.approx(agreement)
    manifest, _ = _bundle.read_bundle(onnx.load(tmp_path / "True.onnx"))
    assert manifest.selection["level_quality"][0] == pytest.approx(agreement, abs=1e-4)
