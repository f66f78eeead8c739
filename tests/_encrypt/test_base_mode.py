"""EncryptOptions(base=...): level 0 holds the base's kernels wherever the fine-tuned
model differs from it, the tiers restore the fine-tuned kernels most important first, the
top level is the original bit for bit; what the base lacks is masked at the budget."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnx_selenc import (
    CalibratedLevels,
    Calibration,
    EncryptOptions,
    encrypt,
    load_session,
    restore_model,
)
from onnx_selenc._cli.commands import main as cli
from onnx_selenc._encrypt.evaluate import sweep
from onnx_selenc._onnx.tensors import kernel_matrix
from onnx_selenc._select.base import differing_kernels
from tests.tiny_models import cnn, feeds

CONVS = ("w1", "w2", "w3", "w4")


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _fine_tuned(base: onnx.ModelProto, seed: int = 1) -> onnx.ModelProto:
    """The base with most kernels moved; w1's first 4 kernels and all of w3 kept."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto()
    model.CopyFrom(base)
    for t in model.graph.initializer:
        if t.name in ("w1", "w2", "w4"):
            a = numpy_helper.to_array(t).copy()
            moved = a + 0.3 * np.abs(a).mean() * rng.standard_normal(a.shape).astype(a.dtype)
            k, m = kernel_matrix(a), kernel_matrix(moved)
            if t.name == "w1":
                m[:4] = k[:4]
            t.CopyFrom(numpy_helper.from_array(m.reshape(a.shape), t.name))
    return model


def _renamed(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    for n in model.graph.node:
        n.input[:] = [prefix + i if i in CONVS else i for i in n.input]
    for t in model.graph.initializer:
        if t.name in CONVS:
            t.name = prefix + t.name
    return model


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    base = cnn(0)
    paths = {"base": tmp_path / "base.onnx", "plain": tmp_path / "tuned.onnx"}
    onnx.save(base, paths["base"])
    onnx.save(_fine_tuned(base), paths["plain"])
    return paths


def _outputs(session: ort.InferenceSession, x: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(session.run(None, x)[0])


def test_level_zero_is_the_base_where_the_model_differs_and_tiers_restore_it(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    out, key = tmp_path / "enc.onnx", tmp_path / "owner.key"
    result = encrypt(
        files["plain"], out, key_file=key,
        options=EncryptOptions(levels=3, base=files["base"], seed=0),
    )  # fmt: skip
    assert result.model_files == (out,)  # no external data: the plain model had none
    plain, base, public = _arrays(files["plain"]), _arrays(files["base"]), _arrays(out)
    for name in CONVS:
        assert np.array_equal(public[name], base[name]), name  # nothing beyond the base
    assert np.array_equal(public["b1"], plain["b1"])  # biases are not conv kernels
    assert result.base is not None
    assert result.base.matched_by == "address" and not result.base.missing
    diff = sum(int(differing_kernels(plain[n], base[n]).sum()) for n in CONVS)
    assert result.base.differing_kernels == diff
    assert result.base.equal_kernels == 4 + 16  # w1's first four, all of w3
    x = feeds(onnx.load(str(files["plain"])))
    want = _outputs(ort.InferenceSession(str(files["plain"])), x)
    top = _outputs(load_session(out, key=key), x)
    assert np.array_equal(top, want)  # the top level: the original, bit for bit
    # Level m holds the fine-tuned values of a growing, nested set of kernels.
    restored = []
    for m in range(4):
        got = {t.name: numpy_helper.to_array(t) for t in
               restore_model(out, key=key, level=m).model.graph.initializer}  # fmt: skip
        flags = np.concatenate(
            [~differing_kernels(got[n], plain[n]) & differing_kernels(plain[n], base[n])
             for n in CONVS]
        )  # fmt: skip
        restored.append(flags)
    assert restored[0].sum() == 0 and restored[3].sum() == diff
    assert 0 < restored[1].sum() < restored[2].sum() < diff
    assert (restored[2] >= restored[1]).all()  # nested
    assert (np.abs(_outputs(load_session(out, key=key, level=1), x) - want).max()) > 0
    # Level 0 with the base's own bias too is the base: only b1 (not a kernel) tells apart.
    public_model = onnx.load(str(out))
    for t in public_model.graph.initializer:
        if t.name == "b1":
            t.CopyFrom(numpy_helper.from_array(base["b1"], "b1"))
    as_base = _outputs(ort.InferenceSession(public_model.SerializeToString()), x)
    assert np.array_equal(as_base, _outputs(ort.InferenceSession(str(files["base"])), x))


def test_a_conv_weight_the_base_lacks_is_masked_whole(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    base = onnx.load(str(files["base"]))
    for t in base.graph.initializer:
        if t.name == "w2":  # another shape: no counterpart
            t.CopyFrom(numpy_helper.from_array(np.zeros((16, 8, 1, 1), np.float32), "w2"))
    other = tmp_path / "other-base.onnx"
    onnx.save(base, other)
    with pytest.warns(UserWarning, match="w2: not in the base .*every kernel masked"):
        result = encrypt(
            files["plain"], tmp_path / "e.onnx", key_file=tmp_path / "k",
            options=EncryptOptions(levels=2, budget=0.2, base=other, seed=0),
        )  # fmt: skip
    assert result.base is not None
    assert [a for a, _ in result.base.missing] == ["w2"]
    public, plain = _arrays(tmp_path / "e.onnx"), _arrays(files["plain"])
    changed = differing_kernels(public["w2"], plain["w2"])
    assert changed.all()  # a layer the fine-tuning added: nothing public stands in for it
    x = feeds(onnx.load(str(files["plain"])))
    want = _outputs(ort.InferenceSession(str(files["plain"])), x)
    assert np.array_equal(_outputs(load_session(tmp_path / "e.onnx", key=tmp_path / "k"), x), want)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("rename", "has none of this model's conv weights"),
        ("same", "nothing to encrypt"),
    ],
)
def test_a_base_that_cannot_serve_is_refused_before_writing(
    tmp_path: Path, files: dict[str, Path], edit: str, message: str
) -> None:
    if edit == "rename":  # other names and one conv more: neither names nor layout match
        other = _renamed(cnn(0), "x_")
        w5 = numpy_helper.from_array(np.ones((2, 16, 1, 1), np.float32), "x_w5")
        other.graph.initializer.append(w5)
        other.graph.node.append(onnx.helper.make_node("Conv", ["d", "x_w5"], ["extra"]))
        base = tmp_path / "odd.onnx"
        onnx.save(other, base)
    else:
        base = files["plain"]
    out = tmp_path / "e.onnx"
    with pytest.raises(ValueError, match=message):
        encrypt(files["plain"], out, key_file=tmp_path / "k", options=EncryptOptions(base=base))
    assert not out.exists() and not (tmp_path / "k").exists()


def test_renumbered_export_is_matched_by_position(tmp_path: Path, files: dict[str, Path]) -> None:
    renamed = tmp_path / "renamed.onnx"
    onnx.save(_renamed(onnx.load(str(files["base"])), "onnx::Conv_"), renamed)
    out = tmp_path / "e.onnx"
    result = encrypt(
        files["plain"], out, key_file=tmp_path / "k",
        options=EncryptOptions(levels=2, base=renamed, seed=0),
    )  # fmt: skip
    assert result.base is not None and result.base.matched_by == "position"
    assert np.array_equal(_arrays(out)["w2"], _arrays(files["base"])["w2"])


def test_wiring_with_a_base_is_refused() -> None:
    with pytest.raises(ValueError, match="wiring adds nothing to a base"):
        EncryptOptions(base="b.onnx", wiring=True)
    with pytest.raises(TypeError, match="base must be a path"):
        EncryptOptions(base=3)  # type: ignore[arg-type]


def test_the_base_is_an_input_the_output_may_not_replace(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    before = files["base"].read_bytes()
    with pytest.raises(ValueError):
        encrypt(
            files["plain"], files["base"], key_file=tmp_path / "k", overwrite=True,
            options=EncryptOptions(base=files["base"]),
        )  # fmt: skip
    assert files["base"].read_bytes() == before


def test_cli_base_reports_what_it_did(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    plain, out, key = str(files["plain"]), str(tmp_path / "e.onnx"), str(tmp_path / "k")
    args = [
        "encrypt",
        plain,
        "-o",
        out,
        "--keys",
        key,
        "--base",
        str(files["base"]),
        "--levels",
        "2",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli(args) == 0
    text = capsys.readouterr().out
    assert "level 0 holds the base's kernels in 4 conv weights (matched by address)" in text
    assert cli([*args[:3], str(tmp_path / "e2.onnx"), "--keys", str(tmp_path / "k2"),
                *args[6:], "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["base"]["matched"] == list(CONVS) and doc["base"]["equal_kernels"] == 20


def test_calibrated_levels_with_a_base_keep_level_zero_the_base(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    x = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)
    out = tmp_path / "e.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 24 held-out inputs: the level report may warn
        result = encrypt(
            files["plain"], out, key_file=tmp_path / "k", calibration=Calibration({"x": x}),
            options=EncryptOptions(
                levels=3, base=files["base"], seed=0, split=CalibratedLevels((0.5, 0.8, 1.0))
            ),
        )  # fmt: skip
    public, base = _arrays(out), _arrays(files["base"])
    assert all(np.array_equal(public[n], base[n]) for n in CONVS)  # no redraw of level 0
    assert result.level_report is not None and result.base is not None
    want = _outputs(ort.InferenceSession(str(files["plain"])), {"x": x})
    assert np.array_equal(_outputs(load_session(out, key=tmp_path / "k"), {"x": x}), want)


def test_the_budget_sweep_refuses_a_base(files: dict[str, Path]) -> None:
    x = Calibration({"x": np.zeros((4, 3, 8, 8), np.float32)})
    with pytest.raises(ValueError, match="whatever the budget"):
        sweep(
            onnx.load(str(files["plain"])), x, x, budgets=[0.1],
            options=EncryptOptions(base=files["base"]),
        )  # fmt: skip


def _classifier(seed: int) -> onnx.ModelProto:
    """Conv (bias) -> BatchNormalization -> Relu -> pool -> Reshape -> Gemm head."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = {
        "w": (rng.standard_normal((8, 3, 3, 3)) / 5).astype(f32),
        "b": rng.standard_normal(8).astype(f32) / 10,
        "s": (1 + rng.standard_normal(8) / 10).astype(f32),
        "t": rng.standard_normal(8).astype(f32) / 10,
        "m": rng.standard_normal(8).astype(f32) / 10,
        "v": (1 + rng.random(8)).astype(f32),
        "shape": np.array([-1, 8], np.int64),
        "fc": (rng.standard_normal((4, 8)) / 3).astype(f32),
        "fb": rng.standard_normal(4).astype(f32) / 10,
    }
    h = onnx.helper
    nodes = [
        h.make_node("Conv", ["x", "w", "b"], ["a"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("BatchNormalization", ["a", "s", "t", "m", "v"], ["n"], name="bn"),
        h.make_node("Relu", ["n"], ["r"]),
        h.make_node("GlobalAveragePool", ["r"], ["g"]),
        h.make_node("Reshape", ["g", "shape"], ["f"]),
        h.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1, name="head"),
    ]
    graph = h.make_graph(
        nodes, "clf", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 3, 8, 8])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )  # fmt: skip
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("large_path", [False, True])
def test_a_base_also_gives_level_zero_its_biases_batch_norms_and_head(
    tmp_path: Path, large_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_model, tuned = _classifier(0), _classifier(0)
    rng = np.random.default_rng(5)
    for t in tuned.graph.initializer:  # fine-tuned: every float tensor moved but one
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and t.name != "v":
            t.CopyFrom(
                numpy_helper.from_array(a + rng.normal(0, 0.05, a.shape).astype(a.dtype), t.name)
            )
    base, plain = tmp_path / "base.onnx", tmp_path / "tuned.onnx"
    onnx.save(base_model, base)
    onnx.save(tuned, plain)
    if large_path:  # the self-check of a model past 2 GB: sealed data against the tensors
        monkeypatch.setattr("onnx_selenc._encrypt.verify.serialise_if_small", lambda m: None)
    out, key = tmp_path / "e.onnx", tmp_path / "k"
    result = encrypt(plain, out, key_file=key, options=EncryptOptions(levels=2, base=base))
    assert result.base is not None
    assert sorted(result.base.other_tensors) == ["b", "fb", "fc", "m", "s", "t"]
    assert result.base.other_values == 8 * 4 + 4 * 8 + 4  # b s t m, fc, fb
    public, want_base, want_plain = _arrays(out), _arrays(base), _arrays(plain)
    for name in ("w", "b", "s", "t", "m", "fc", "fb"):
        assert np.array_equal(public[name], want_base[name]), name
    assert np.array_equal(public["v"], want_plain["v"]) and np.array_equal(
        public["shape"], want_plain["shape"]
    )
    for level in (1, 2):  # the other tensors come back whole at level 1
        got = {t.name: numpy_helper.to_array(t) for t in
               restore_model(out, key=key, level=level).model.graph.initializer}  # fmt: skip
        for name in ("b", "s", "t", "m", "fc", "fb"):
            assert np.array_equal(got[name], want_plain[name]), (level, name)
    x = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    want = _outputs(ort.InferenceSession(str(plain)), x)
    assert np.array_equal(_outputs(load_session(out, key=key), x), want)
    as_base = _outputs(ort.InferenceSession(str(base)), x)
    assert not np.array_equal(_outputs(ort.InferenceSession(str(out)), x), want)
    # Level 0 differs from the base only through v, the one tensor the fine-tune left.
    assert np.allclose(_outputs(ort.InferenceSession(str(out)), x), as_base, atol=0.5)


def test_a_float_that_sets_a_shape_is_never_taken_from_the_base(tmp_path: Path) -> None:
    h = onnx.helper

    def model(scale: float, w: np.ndarray) -> onnx.ModelProto:
        inits = [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales"),
        ]
        nodes = [
            h.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
            h.make_node("Resize", ["a", "", "scales"], ["y"], mode="nearest"),
        ]
        graph = h.make_graph(
            nodes, "up", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
            [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits,
        )  # fmt: skip
        return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    onnx.save(model(3.0, w + 0.1), tmp_path / "base.onnx")
    onnx.save(model(2.0, w), tmp_path / "plain.onnx")
    out = tmp_path / "e.onnx"
    result = encrypt(
        tmp_path / "plain.onnx", out, key_file=tmp_path / "k",
        options=EncryptOptions(levels=2, base=tmp_path / "base.onnx"),
    )  # fmt: skip
    assert result.base is not None and result.base.other_tensors == ()
    assert _arrays(out)["scales"].tolist() == [1, 1, 2, 2]


def test_a_head_the_base_lacks_is_shuffled_in_level_zero(tmp_path: Path) -> None:
    base_model, tuned = _classifier(0), _classifier(1)
    for t in base_model.graph.initializer:  # the checkpoint's head had other classes
        if t.name in ("fc", "fb"):
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.concatenate([a, a]), t.name))
    base, plain = tmp_path / "base.onnx", tmp_path / "tuned.onnx"
    onnx.save(base_model, base)
    onnx.save(tuned, plain)
    out, key = tmp_path / "e.onnx", tmp_path / "k"
    result = encrypt(plain, out, key_file=key, options=EncryptOptions(levels=2, base=base, seed=0))
    assert result.base is not None and {"fc", "fb"} <= set(result.base.other_tensors)
    public, want = _arrays(out), _arrays(plain)
    for name in ("fc", "fb"):  # the fine-tuned head's own values, in a random order
        assert not np.array_equal(public[name], want[name])
        assert np.array_equal(np.sort(public[name], axis=None), np.sort(want[name], axis=None))
    got = {t.name: numpy_helper.to_array(t) for t in
           restore_model(out, key=key, level=1).model.graph.initializer}  # fmt: skip
    assert all(np.array_equal(got[n], want[n]) for n in ("fc", "fb"))
