"""Block-wise encryption: stem detection, exact equivalence, model files, key checks."""

from __future__ import annotations

import base64
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from onnx_selenc.blockwise import (
    METADATA_KEY,
    BlockKey,
    ImageDomain,
    WeakKeyWarning,
    apply_key,
    check_key,
    encrypt_images,
    encrypt_model,
    find_patch_stem,
    model_key_info,
    to_model_input,
)
from onnx_selenc.exceptions import FormatError, KeyMismatch, NotEncrypted, UnsupportedModel
from tests.blockwise.test_models import MEAN, STD, no_conv, patch_model, resnet_like, run, vit_like

TOL = 1e-4
KEYS = {
    "perm": {},
    "perm_flip": {"flip": True},
    "orthogonal": {"transform": "orthogonal"},
    "orthogonal_flip": {"transform": "orthogonal", "flip": True},
}
MODELS = {
    "plain": lambda: patch_model(),
    "no_bias": lambda: patch_model(bias=False),
    "sub_div": lambda: patch_model(norm="sub_div"),
    "mul_add_no_bias": lambda: patch_model(norm="mul_add", bias=False),
    "nhwc_norm_constant_w": lambda: patch_model(
        layout="NHWC", norm="sub_div", constant_weight=True
    ),
    "nhwc_constant_no_bias": lambda: patch_model(
        layout="NHWC", norm="mul_add", constant_weight=True, bias=False
    ),
    "nhwc_norm_after": lambda: patch_model(
        layout="NHWC", norm="mul_add", norm_after_transpose=True
    ),
    "p2_c1": lambda: patch_model(patch=2, channels=1, size=8),
    "p7_odd_size": lambda: patch_model(patch=7, size=23),
    "mixer": lambda: patch_model(mixer=True, norm="sub_div"),
    "vit": lambda: vit_like(),
}


def _key_for(model: onnx.ModelProto, domain: ImageDomain | None = None, **kw: object) -> BlockKey:
    stem = find_patch_stem(model)
    dom = domain or ImageDomain(255.0 if stem.integer_input else 1.0)
    return BlockKey.generate(
        patch=stem.patch, channels=stem.channels, layout=stem.layout, domain=dom, **kw
    )


def _images(model: onnx.ModelProto, n: int = 6, seed: int = 3) -> np.ndarray:
    vi = model.graph.input[0]
    dims = [d.dim_value or n for d in vi.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    if vi.type.tensor_type.elem_type == TensorProto.UINT8:
        return rng.integers(0, 256, dims).astype(np.uint8)
    return rng.random(dims).astype(np.float32)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("key_kind", list(KEYS))
@pytest.mark.parametrize("model_kind", list(MODELS))
def test_encrypted_model_on_encrypted_images_equals_plain(model_kind: str, key_kind: str) -> None:
    model = MODELS[model_kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakKeyWarning)
        key = _key_for(model, **KEYS[key_kind])
    enc = apply_key(model, key)
    x = _images(model)
    y = run(model, x)
    assert _rel(run(enc, encrypt_images(x, key)), y) <= TOL
    # plain images on the encrypted model are materially different
    assert _rel(run(enc, x), y) > 0.05


@pytest.mark.parametrize("key_kind", ["perm", "perm_flip"])
def test_uint8_input_model(key_kind: str) -> None:
    model = patch_model(dtype=TensorProto.UINT8, mixer=True)
    key = _key_for(model, **KEYS[key_kind])
    assert key.domain.pixel_max == 255.0
    x = _images(model)
    xe = encrypt_images(x, key)
    assert xe.dtype == np.uint8
    assert _rel(run(apply_key(model, key), xe), run(model, x)) <= TOL
    with pytest.raises(UnsupportedModel, match="integer pixels"):
        apply_key(model, _key_for(model, transform="orthogonal"))


@pytest.mark.parametrize("key_kind", list(KEYS))
def test_client_side_normalisation(key_kind: str) -> None:
    """Model expects normalised input; the client encrypts pixels, then normalises."""
    model = patch_model()
    key = _key_for(model, domain=ImageDomain(1.0, MEAN, STD), **KEYS[key_kind])
    pixels = np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16)).astype(np.uint8)
    y = run(model, to_model_input(pixels, key))
    y_enc = run(apply_key(model, key), to_model_input(encrypt_images(pixels, key), key))
    assert _rel(y_enc, y) <= TOL


def test_stem_detection_details() -> None:
    stem = find_patch_stem(
        patch_model(layout="NHWC", norm="sub_div", constant_weight=True, bias=False, patch=2)
    )
    assert (stem.patch, stem.channels, stem.layout, stem.bias) == (2, 3, "NHWC", None)
    np.testing.assert_allclose(stem.scale, 1 / np.asarray(STD), rtol=1e-6)
    np.testing.assert_allclose(stem.shift, -np.asarray(MEAN) / np.asarray(STD), rtol=1e-6)
    assert len(stem.chain) == 3
    plain = find_patch_stem(patch_model(patch=4))
    assert plain.scale == (1.0, 1.0, 1.0) and plain.image_size == (16, 16)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (resnet_like(), "stem Conv 'conv1' has kernel 7 and stride 2: not a patch embedding"),
        (no_conv(), "no Conv node"),
    ],
)
def test_refuses_models_without_patch_stem(model: onnx.ModelProto, message: str) -> None:
    with pytest.raises(UnsupportedModel, match=message):
        find_patch_stem(model)


def test_refuses_padded_grouped_and_shared_image() -> None:
    model = patch_model()
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.attribute.append(onnx.helper.make_attribute("pads", [1, 1, 1, 1]))
    with pytest.raises(UnsupportedModel, match="pads its input"):
        find_patch_stem(model)
    model = patch_model()
    # a second reader of the image input (a skip connection from the pixels)
    model.graph.node.append(onnx.helper.make_node("Relu", ["x"], ["leak"]))
    with pytest.raises(UnsupportedModel, match="read by 2 nodes"):
        find_patch_stem(model)
    model = patch_model(norm="sub_div")
    mean = next(i for i in model.graph.initializer if i.name.startswith("mean"))
    mean.CopyFrom(onnx.numpy_helper.from_array(np.zeros((3, 16, 1), np.float32), mean.name))
    with pytest.raises(UnsupportedModel, match="varies over space"):
        find_patch_stem(model)


def test_encrypt_model_files(tmp_path: Path) -> None:
    src = tmp_path / "plain.onnx"
    onnx.save(patch_model(norm="sub_div"), src)
    before = src.read_bytes()
    out, key_path = tmp_path / "enc.onnx", tmp_path / "model.key"
    result = encrypt_model(src, out, key_out=key_path, flip=True)
    assert src.read_bytes() == before
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    key = BlockKey.load(key_path)
    assert result.key_id == key.key_id and 250 < result.key_space_bits < 252  # 48! * 2**48
    enc = onnx.load(out)
    info = model_key_info(enc)
    assert info is not None and info["key_id"] == key.key_id and "key" not in info
    assert check_key(out, key)["patch"] == 4
    assert base64.b64encode(key.secret) not in out.read_bytes()
    assert [p.key for p in enc.metadata_props] == [METADATA_KEY]
    x = _images(enc)
    assert _rel(run(enc, encrypt_images(x, key)), run(onnx.load(src), x)) <= TOL
    # the key file is never replaced, the input never overwritten
    with pytest.raises(FileExistsError):
        encrypt_model(src, tmp_path / "other.onnx", key_out=key_path)
    with pytest.raises(ValueError, match="overwrite the input"):
        encrypt_model(src, src, key_out=tmp_path / "k2.key")
    with pytest.raises(ValueError, match="overwrite the input"):
        encrypt_model(src, tmp_path / "o.onnx", key_out=src)
    assert src.read_bytes() == before
    assert not (tmp_path / "k2.key").exists()
    # an already encrypted model is refused
    with pytest.raises(UnsupportedModel, match="already"):
        encrypt_model(out, tmp_path / "twice.onnx", key_out=tmp_path / "k3.key")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01 not protobuf at all \xff" * 10)
    with pytest.raises(FormatError, match="not a readable ONNX model"):
        encrypt_model(tmp_path / "junk.onnx", tmp_path / "o.onnx", key_out=tmp_path / "k.key")
    with pytest.raises(FileNotFoundError):
        encrypt_model(tmp_path / "missing.onnx", tmp_path / "o.onnx", key_out=tmp_path / "k.key")


def test_refused_model_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "resnet.onnx"
    onnx.save(resnet_like(), src)
    with pytest.raises(UnsupportedModel, match="kernel 7 and stride 2"):
        encrypt_model(src, tmp_path / "o.onnx", key_out=tmp_path / "k.key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet.onnx"]


def test_wrong_key_is_reported_and_gives_garbage(tmp_path: Path) -> None:
    model = patch_model(norm="sub_div")
    key, other = _key_for(model, flip=True), _key_for(model, flip=True)
    enc = apply_key(model, key)
    with pytest.raises(KeyMismatch, match=f"this key \\(id {other.key_id}\\) was not made for"):
        check_key(enc, other)
    with pytest.raises(NotEncrypted):
        check_key(model, key)
    x = _images(model)
    assert _rel(run(enc, encrypt_images(x, other)), run(model, x)) > 0.05


def test_weak_key_warning(tmp_path: Path) -> None:
    src = tmp_path / "p2.onnx"
    onnx.save(patch_model(patch=2, channels=3, size=8), src)
    with pytest.warns(WeakKeyWarning, match="28.8 bits"):
        result = encrypt_model(src, tmp_path / "o.onnx", key_out=tmp_path / "k.key")
    assert result.weak
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strong = encrypt_model(
            src, tmp_path / "o2.onnx", key_out=tmp_path / "k2.key", orthogonal=True
        )
    assert not strong.weak and strong.key_space_bits == 256.0
