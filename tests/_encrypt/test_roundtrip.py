"""Encrypt -> plain onnxruntime runs but differs -> each level -> top level is bit-exact."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc as se
from onnx_selenc._onnx.graph import walk_conv_weights
from onnx_selenc._onnx.tensors import read_array, weight_tensor
from tests import tiny_models as tm
from tests.conftest import ort_run


def _all_feeds(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    f = tm.feeds(model)
    if "cond" in f:  # exercise both If branches
        return [f, {**f, "cond": np.array(False)}]
    return [f]


@pytest.mark.parametrize("name", sorted(tm.ALL))
def test_round_trip_every_weight_location(name: str, make_encrypted) -> None:
    model = tm.ALL[name]()
    enc_path, key = make_encrypted(model, levels=3, budget=0.3)
    onnx.checker.check_model(onnx.load(enc_path))
    for feeds in _all_feeds(model):
        plain = ort_run(model, feeds)
        encrypted = ort_run(enc_path, feeds)  # runs in plain onnxruntime
        assert not np.allclose(plain[0], encrypted[0], atol=1e-3)
        top = se.load_session(enc_path, key=key).run(None, feeds)
        assert all(np.array_equal(a, b) for a, b in zip(plain, top, strict=True))
        level0 = se.load_session(enc_path, key=key, level=0).run(None, feeds)
        assert np.array_equal(level0[0], encrypted[0])


@pytest.mark.parametrize("name", sorted(tm.ALL))
def test_top_level_weights_are_bitwise_the_originals(name: str, make_encrypted) -> None:
    model = tm.ALL[name]()
    enc_path, key = make_encrypted(model, levels=4, budget=0.5)
    restored = se.restore_model(enc_path, key=key).model
    for w in walk_conv_weights(model).weights:
        a = read_array(weight_tensor(model, w), None)
        b = read_array(weight_tensor(restored, w), None)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert not any(p.key.startswith("onnx_selenc") for p in restored.metadata_props)


def test_levels_restore_nested_sets(make_encrypted) -> None:
    model = tm.wide_cnn()
    enc_path, key = make_encrypted(model, levels=4, budget=0.2)
    originals = {
        w.address: read_array(weight_tensor(model, w), None)
        for w in walk_conv_weights(model).weights
    }
    wrong_counts = []
    for level in range(5):
        restored = se.restore_model(enc_path, key=key, level=level).model
        wrong = sum(
            int(
                np.count_nonzero(
                    read_array(weight_tensor(restored, w), None) != originals[w.address]
                )
            )
            for w in walk_conv_weights(restored).weights
        )
        wrong_counts.append(wrong)
    assert wrong_counts[0] > wrong_counts[1] > wrong_counts[2] > wrong_counts[3] > 0
    assert wrong_counts[4] == 0


def test_output_error_shrinks_with_level(make_encrypted) -> None:
    model = tm.wide_cnn()
    enc_path, key = make_encrypted(model, levels=4, budget=0.2)
    feeds = tm.feeds(model, n=8)
    ref = ort_run(model, feeds)[0]
    errors = [
        float(np.abs(se.load_session(enc_path, key=key, level=m).run(None, feeds)[0] - ref).mean())
        for m in range(5)
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] == 0.0


def test_same_seed_gives_same_masked_model(tmp_path: Path, make_encrypted) -> None:
    model = tm.cnn()
    a, _ = make_encrypted(model, seed=7)
    b, _ = make_encrypted(model, seed=7)
    c, _ = make_encrypted(model, seed=8)
    wa, wb, wc = (
        se.restore_model(p, key=k, level=0).model
        for p, k in [(a, _key(a)), (b, _key(b)), (c, _key(c))]
    )
    assert wa.graph.SerializeToString() == wb.graph.SerializeToString()
    assert wa.graph.SerializeToString() != wc.graph.SerializeToString()


def _key(enc: Path) -> Path:
    return enc.with_name(enc.name.replace("enc", "owner").replace(".onnx", ".key"))


def test_external_data_round_trip(tmp_path: Path) -> None:
    model = tm.wide_cnn(width=48)
    plain = tmp_path / "src" / "model.onnx"
    plain.parent.mkdir()
    onnx.save(
        model, plain, save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    before = {p.name: p.read_bytes() for p in plain.parent.iterdir()}
    result = se.encrypt(
        plain,
        tmp_path / "out" / "model.enc.onnx",
        key_file=tmp_path / "owner.key",
        budget=0.05,
        seed=0,
    )
    assert [p.name for p in result.model_files] == ["model.enc.onnx", "model.enc.onnx.data"]
    assert {p.name: p.read_bytes() for p in plain.parent.iterdir()} == before  # inputs intact
    onnx.checker.check_model(str(result.model_files[0]))
    feeds = tm.feeds(model)
    ref = ort_run(plain, feeds)[0]
    assert not np.allclose(ort_run(result.model_files[0], feeds)[0], ref, atol=1e-3)
    top = se.load_session(result.model_files[0], key=result.key_file).run(None, feeds)[0]
    assert np.array_equal(top, ref)


def test_external_data_kept_on_disk_path(tmp_path: Path, monkeypatch) -> None:
    """Large external data is read by onnxruntime itself; restored tensors go in memory."""
    from onnx_selenc._load import opened as _opened

    monkeypatch.setattr(_opened, "INLINE_EXTERNAL_LIMIT", 0)
    model = tm.wide_cnn(width=48)
    plain = tmp_path / "model.onnx"
    onnx.save(
        model, plain, save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    result = se.encrypt(
        plain, tmp_path / "model.enc.onnx", key_file=tmp_path / "k.key", budget=0.05, seed=0
    )
    restored = se.restore_model(result.model_files[0], key=result.key_file)
    assert restored.base_dir is not None and set(restored.external_initializers) == {"w1", "w2"}
    feeds = tm.feeds(model)
    top = se.build_session(restored).run(None, feeds)[0]
    assert np.array_equal(top, ort_run(plain, feeds)[0])


def test_encrypt_result_and_files(tmp_path: Path) -> None:
    plain = tmp_path / "m.onnx"
    onnx.save(tm.cnn(), plain)
    result = se.encrypt(
        plain,
        tmp_path / "m.enc.onnx",
        key_file=tmp_path / "owner.key",
        levels=5,
        budget=0.1,
        seed=0,
    )
    assert result.levels == 5 and 0.09 < result.fraction < 0.13
    assert sum(layer.encrypted_kernels for layer in result.layers) > 0
    assert os.stat(result.key_file).st_mode & 0o777 == 0o600
    manifest = se.inspect_model(result.model_files[0]).manifest
    assert manifest is not None and manifest["levels"] == 5
    assert manifest["level_weights"][-1] == result.encrypted_weights
    # The public manifest does not say which tensors or kernels are encrypted.
    assert "w1" not in str(manifest) and "w2" not in str(manifest)


def test_uniform_allocation_matches_paper_formula(tmp_path: Path) -> None:
    plain = tmp_path / "m.onnx"
    onnx.save(tm.wide_cnn(), plain)
    result = se.encrypt(
        plain,
        tmp_path / "e.onnx",
        key_file=tmp_path / "k.key",
        allocation="uniform",
        budget=0.1,
        layers=["c2"],
        seed=0,
    )
    (layer,) = result.layers
    assert layer.address == "w2" and layer.encrypted_kernels == int(32 * 32 * 0.1) + 1


def test_least_important_first_order(make_encrypted) -> None:
    model = tm.wide_cnn()
    enc_path, key = make_encrypted(model, levels=2, budget=0.3, level_order="least-important-first")
    assert np.array_equal(
        se.load_session(enc_path, key=key, level=2).run(None, tm.feeds(model))[0],
        ort_run(model, tm.feeds(model))[0],
    )


def test_large_weights_read_only_in_subgraphs(tmp_path: Path) -> None:
    """Weights the loader hands over in memory (>= 64 KB) read only inside If branches,
    from an outer initializer and from an outer Constant, next to an unused one."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w_in, w_init, w_const, unused = (
        (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)
        for s in ((64, 3, 3, 3), (64, 64, 3, 3), (64, 64, 3, 3), (64, 64, 3, 3))
    )
    branch = {
        name: helper.make_graph(
            [helper.make_node("Conv", ["a", weight], [f"{name}_out"], pads=[1, 1, 1, 1])],
            name,
            [],
            [tm.y_info(f"{name}_out")],
        )
        for name, weight in (("then", "w_init"), ("else", "w_const"))
    }
    nodes = [
        helper.make_node(
            "Constant", [], ["w_const"], value=numpy_helper.from_array(w_const, "w_const")
        ),
        helper.make_node("Conv", ["x", "w_in"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=branch["then"], else_branch=branch["else"]
        ),
    ]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w_in, "w_in"), (w_init, "w_init"), (unused, "unused"))
    ]
    model = tm._model(nodes, [tm.x_info(), cond], [tm.y_info()], inits)
    plain = tmp_path / "m.onnx"
    onnx.save(model, plain)
    result = se.encrypt(
        plain, tmp_path / "m.enc.onnx", key_file=tmp_path / "k.key", levels=2, budget=0.3, seed=0
    )
    session = se.load_session(result.model_files[0], key=result.key_file)
    for feeds in _all_feeds(model):
        expected = ort_run(model, feeds)[0]
        assert not np.allclose(ort_run(result.model_files[0], feeds)[0], expected, atol=1e-3)
        assert np.array_equal(session.run(None, feeds)[0], expected)
    # What ONNX Runtime may take in memory: read somewhere (here only in subgraphs);
    # the unused initializer is not (ONNX Runtime drops it, then refuses its value).
    from onnx_selenc._load.session import _memory_candidates

    assert {name for _, name in _memory_candidates(model).values()} == {"w_in", "w_init", "w_const"}
