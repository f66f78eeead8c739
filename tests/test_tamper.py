"""Wrong keys, tampered files and level escalation all fail loudly, never silently."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc as se
from onnx_selenc import _bundle
from onnx_selenc.exceptions import (
    FormatError,
    InvalidBundle,
    KeyFileError,
    KeyMismatch,
    LevelNotGranted,
    NotEncrypted,
)

from . import tiny_models as tm


def _edit_metadata(path: Path, key: str, fn) -> None:
    model = onnx.load(path)
    for p in model.metadata_props:
        if p.key == key:
            p.value = fn(p.value)
    path.write_bytes(model.SerializeToString())


def test_key_of_another_model_is_a_key_mismatch(make_encrypted) -> None:
    enc_a, _ = make_encrypted(tm.cnn())
    _, key_b = make_encrypted(tm.cnn())
    with pytest.raises(KeyMismatch, match="belongs to another model"):
        se.load_session(enc_a, key=key_b)


def test_level_escalation_is_refused(make_encrypted, tmp_path: Path) -> None:
    enc, owner = make_encrypted(tm.cnn(), levels=4)
    se.export_key(owner, 2, tmp_path / "tier2.key")
    with pytest.raises(LevelNotGranted, match="level 2; level 3 was asked"):
        se.load_session(enc, key=tmp_path / "tier2.key", level=3)
    # Editing the level field of a tier key does not help.
    doc = json.loads((tmp_path / "tier2.key").read_text())
    doc["level"] = 4
    (tmp_path / "forged.key").write_text(json.dumps(doc))
    with pytest.raises(KeyFileError):
        se.load_session(enc, key=tmp_path / "forged.key")


@pytest.mark.parametrize("where", [0, 40, -1])
def test_flipped_byte_in_sealed_data(make_encrypted, where: int) -> None:
    enc, key = make_encrypted(tm.cnn(), levels=3, budget=0.2)

    def flip(value: str) -> str:
        raw = bytearray(base64.b64decode(value))
        raw[where] ^= 0x01
        return base64.b64encode(bytes(raw)).decode()

    _edit_metadata(enc, _bundle.SEALED_KEY, flip)
    with pytest.raises(InvalidBundle, match="failed authentication"):
        se.load_session(enc, key=key)


def test_edited_manifest(make_encrypted) -> None:
    enc, key = make_encrypted(tm.cnn())
    _edit_metadata(enc, _bundle.MANIFEST_KEY,
                   lambda v: v.replace('"masking":"empirical"', '"masking":"gaussian"'))
    with pytest.raises(InvalidBundle):
        se.load_session(enc, key=key)


def test_edited_weight_outside_the_selection(make_encrypted) -> None:
    enc, key = make_encrypted(tm.cnn())
    model = onnx.load(enc)
    b1 = next(i for i in model.graph.initializer if i.name == "b1")
    b1.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(b1) * 1.01, "b1"))
    enc.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidBundle, match="modified after encryption"):
        se.load_session(enc, key=key)


def test_blob_moved_between_models_with_same_key(tmp_path: Path) -> None:
    from onnx_selenc._encrypt import encrypt_model
    from onnx_selenc._keys import new_owner_key

    owner = new_owner_key(3)
    a = encrypt_model(tm.cnn(seed=0), levels=3, budget=0.2, owner_key=owner).model
    b = encrypt_model(tm.cnn(seed=9), levels=3, budget=0.2, owner_key=owner).model
    sealed_b = next(p.value for p in b.metadata_props if p.key == _bundle.SEALED_KEY)
    for p in a.metadata_props:
        if p.key == _bundle.SEALED_KEY:
            p.value = sealed_b
    path = tmp_path / "swapped.onnx"
    path.write_bytes(a.SerializeToString())
    with pytest.raises((InvalidBundle, FormatError)):
        se.restore_model(path, key=owner)


def test_blobs_swapped_between_levels(make_encrypted) -> None:
    enc, key = make_encrypted(tm.wide_cnn(), levels=2, budget=0.2)
    _, blobs = _bundle.read_bundle(onnx.load(enc))
    assert len(blobs[1]) == len(blobs[2])  # equal split: same size, swappable
    _edit_metadata(enc, _bundle.SEALED_KEY,
                   lambda v: base64.b64encode(blobs[0] + blobs[2] + blobs[1]).decode())
    with pytest.raises(InvalidBundle):
        se.load_session(enc, key=key)


def test_truncated_sealed_data(make_encrypted) -> None:
    enc, key = make_encrypted(tm.cnn())
    _edit_metadata(enc, _bundle.SEALED_KEY, lambda v: v[: len(v) // 2 // 4 * 4])
    with pytest.raises(FormatError, match="truncated or edited"):
        se.load_session(enc, key=key)


def test_truncated_model_file(make_encrypted) -> None:
    enc, key = make_encrypted(tm.cnn())
    enc.write_bytes(enc.read_bytes()[:-200])
    with pytest.raises(FormatError):
        se.load_session(enc, key=key)


def test_plain_model_is_not_encrypted(tmp_path: Path, make_encrypted) -> None:
    _, key = make_encrypted(tm.cnn())
    plain = tmp_path / "plain.onnx"
    onnx.save(tm.cnn(), plain)
    with pytest.raises(NotEncrypted):
        se.load_session(plain, key=key)


def test_garbage_file_is_a_format_error(tmp_path: Path, make_encrypted) -> None:
    _, key = make_encrypted(tm.cnn())
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot a model" * 10)
    with pytest.raises(FormatError, match="not a valid ONNX model"):
        se.load_session(junk, key=key)


def test_encrypting_twice_is_refused(make_encrypted, tmp_path: Path) -> None:
    enc, _ = make_encrypted(tm.cnn())
    with pytest.raises(se.exceptions.SelencError, match="already encrypted"):
        se.encrypt(enc, tmp_path / "twice.onnx", key_file=tmp_path / "twice.key")


def test_no_conv_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "mm.onnx"
    onnx.save(tm.no_conv(), path)
    with pytest.raises(se.exceptions.UnsupportedModel, match="no encryptable conv weights"):
        se.encrypt(path, tmp_path / "o.onnx", key_file=tmp_path / "k.key")
    assert not (tmp_path / "k.key").exists() and not (tmp_path / "o.onnx").exists()


def test_runtime_weight_warns_and_encrypts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(tm.runtime_weight(), path)
    with pytest.warns(UserWarning, match="computed at run time"):
        result = se.encrypt(path, tmp_path / "o.onnx", key_file=tmp_path / "k.key", budget=0.3)
    assert [layer.key for layer in result.layers] == ["w1"] and len(result.unsupported) == 1


def test_input_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(tm.cnn(), path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="refusing to overwrite the input"):
        se.encrypt(path, path, key_file=tmp_path / "k.key")
    with pytest.raises(FileExistsError):
        se.encrypt(path, tmp_path / "o.onnx", key_file=path)
    assert path.read_bytes() == before and not (tmp_path / "k.key").exists()


def test_existing_key_file_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(tm.cnn(), path)
    (tmp_path / "k.key").write_text("precious")
    with pytest.raises(FileExistsError):
        se.encrypt(path, tmp_path / "o.onnx", key_file=tmp_path / "k.key")
    assert (tmp_path / "k.key").read_text() == "precious"


def test_unknown_format_version(make_encrypted) -> None:
    enc, key = make_encrypted(tm.cnn())
    _edit_metadata(enc, _bundle.MANIFEST_KEY, lambda v: v.replace('"version":1', '"version":9'))
    with pytest.raises(FormatError, match="version 9 is unknown"):
        se.load_session(enc, key=key)


def test_level0_output_equals_plain_onnxruntime_on_encrypted_file(make_encrypted) -> None:
    from .conftest import ort_run

    model = tm.cnn()
    enc, key = make_encrypted(model)
    feeds = tm.feeds(model)
    assert np.array_equal(se.load_session(enc, key=key, level=0).run(None, feeds)[0],
                          ort_run(enc, feeds)[0])
