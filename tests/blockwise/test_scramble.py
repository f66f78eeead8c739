"""Block scrambling: proven exact for position-embedding models, refused elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_selenc.blockwise import (
    BlockKey,
    apply_key,
    encrypt_images,
    encrypt_model,
    find_patch_stem,
    plan_scramble,
)
from onnx_selenc.exceptions import UnsupportedModel
from tests.blockwise.test_models import patch_model, run, token_model, vit_like

TOL = 1e-4


def _scramble_key(model: onnx.ModelProto, **kw: object) -> tuple[BlockKey, object]:
    stem = find_patch_stem(model)
    plan = plan_scramble(model, stem)
    key = BlockKey.generate(
        patch=stem.patch,
        channels=stem.channels,
        layout=stem.layout,
        scramble=True,
        grid=plan.grid,
        **kw,
    )
    return key, plan


@pytest.mark.parametrize("variant", ["mean_pool", "cls_token", "pos_on_grid", "attn_bias"])
@pytest.mark.parametrize(
    "kw",
    [{}, {"flip": True}, {"transform": "orthogonal", "flip": True}],
    ids=["perm", "flip", "orth"],
)
def test_scrambling_is_exact_with_position_embedding(variant: str, kw: dict) -> None:
    model = vit_like(
        cls_token=variant == "cls_token",
        pos_on_grid=variant == "pos_on_grid",
        attn_bias=variant == "attn_bias",
    )
    key, plan = _scramble_key(model, **kw)
    assert plan.grid == (4, 4) and len(plan.edits) == (2 if variant == "attn_bias" else 1)
    if variant == "attn_bias":
        bias = next(e for e in plan.edits if e.tensor.startswith("bias"))
        assert [move[0] for move in bias.moves] == [(2,), (3,)]
    enc = apply_key(model, key)
    x = np.random.default_rng(0).random((4, 3, 16, 16)).astype(np.float32)
    y = run(model, x)
    xe = encrypt_images(x, key)
    assert np.abs(run(enc, xe) - y).max() <= TOL * np.abs(y).max()
    # blocks really moved: undo only the in-block transform and compare with x
    unscrambled_only = BlockKey(
        key.secret,
        key.patch,
        key.channels,
        key.layout,
        key.transform,
        key.flip,
        False,
        None,
        key.domain,
    )
    assert not np.allclose(encrypt_images(x, unscrambled_only), xe)
    # the plain position table is gone from the encrypted model
    pos_name = plan.edits[0].tensor
    plain_pos = numpy_helper.to_array(
        next(i for i in model.graph.initializer if i.name == pos_name)
    )
    enc_pos = numpy_helper.to_array(next(i for i in enc.graph.initializer if i.name == pos_name))
    assert not np.array_equal(plain_pos, enc_pos)
    assert np.array_equal(np.sort(plain_pos, axis=None), np.sort(enc_pos, axis=None))


@pytest.mark.parametrize(
    ("tail", "edited"), [("seq_first", {"pos"}), ("flatten_head", {"pos", "head"})]
)
def test_scrambling_through_merged_token_axes(tail: str, edited: set[str]) -> None:
    """Tokens merged with the batch (seq-first attention) or flattened into a linear head."""
    model = token_model(tail)
    key, plan = _scramble_key(model, flip=True)
    assert {e.tensor.rsplit("_", 1)[0] for e in plan.edits} == edited
    x = np.random.default_rng(2).random((3, 3, 16, 16)).astype(np.float32)
    y = run(model, x)
    y_enc = run(apply_key(model, key), encrypt_images(x, key))
    assert np.abs(y_enc - y).max() <= TOL * np.abs(y).max()


def test_scrambling_refused_for_convmixer() -> None:
    model = patch_model(mixer=True)
    with pytest.raises(UnsupportedModel, match=r"Conv '.*' mixes neighbouring positions"):
        plan_scramble(model, find_patch_stem(model))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (vit_like(share_pos=True), "also used by node"),
        (vit_like(token_mlp=True), "not a constant that could be permuted"),
        (token_model("ln_across_tokens"), "normalises across part of the scrambled grid"),
    ],
    ids=["shared_pos", "token_mlp_residual", "ln_across_tokens"],
)
def test_scrambling_refused_when_not_provable(model: onnx.ModelProto, message: str) -> None:
    with pytest.raises(UnsupportedModel, match=message):
        plan_scramble(model, find_patch_stem(model))


def _tokens_model(tail: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 2, 2), np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape")
    idx = numpy_helper.from_array(np.array(1, np.int64), "idx")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["e"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["e", "shape"], ["t"]),
    ]
    if tail == "gather":
        nodes.append(helper.make_node("Gather", ["t", "idx"], ["y"], axis=2))
    else:
        nodes.append(helper.make_node("Identity", ["t"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, shape, idx],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.mark.parametrize(
    ("tail", "message"),
    [("gather", "picks tokens by their position"), ("tokens", "still depends on the block order")],
)
def test_scrambling_refused_for_position_dependent_outputs(tail: str, message: str) -> None:
    model = _tokens_model(tail)
    with pytest.raises(UnsupportedModel, match=message):
        plan_scramble(model, find_patch_stem(model))


def test_scrambling_needs_a_fixed_image_size() -> None:
    model = vit_like()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "H"
    with pytest.raises(UnsupportedModel, match="fixed image size"):
        plan_scramble(model, find_patch_stem(model))


def test_plan_without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    model = vit_like(cls_token=True)
    with_ort = plan_scramble(model, find_patch_stem(model))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert plan_scramble(model, find_patch_stem(model)) == with_ort


def test_encrypt_model_with_scramble(tmp_path: Path) -> None:
    src = tmp_path / "vit.onnx"
    onnx.save(vit_like(cls_token=True), src)
    result = encrypt_model(
        src, tmp_path / "enc.onnx", key_out=tmp_path / "k.key", scramble=True, flip=True
    )
    key = BlockKey.load(result.key_path)
    assert key.scramble and key.grid == (4, 4) and result.scrambled_constants
    x = np.random.default_rng(1).random((3, 3, 16, 16)).astype(np.float32)
    y = run(onnx.load(src), x)
    y_enc = run(onnx.load(result.model_path), encrypt_images(x, key))
    assert np.abs(y_enc - y).max() <= TOL * np.abs(y).max()
    src2 = tmp_path / "mixer.onnx"
    onnx.save(patch_model(mixer=True), src2)
    with pytest.raises(UnsupportedModel, match="scrambling is refused"):
        encrypt_model(src2, tmp_path / "m.onnx", key_out=tmp_path / "m.key", scramble=True)
    assert not (tmp_path / "m.key").exists()
