"""Wrong keys, tampered files and level escalation all fail loudly, never silently."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc as se
from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc.exceptions import (
    FormatError,
    InvalidBundle,
    KeyFileError,
    KeyMismatch,
    LevelNotGranted,
    NotEncrypted,
)
from tests import tiny_models as tm


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
    se.export_key(owner, 1, tmp_path / "tier1.key")
    with pytest.raises(
        LevelNotGranted, match="level 3 was asked for, but this key grants level 2 of 4"
    ):
        se.load_session(enc, key=tmp_path / "tier2.key", level=3)
    # The message names the level asked for, not the first one the key cannot derive.
    with pytest.raises(
        LevelNotGranted, match="level 4 was asked for, but this key grants level 1 of 4"
    ):
        se.load_session(enc, key=tmp_path / "tier1.key", level=4)
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
    _edit_metadata(
        enc,
        _bundle.MANIFEST_KEY,
        lambda v: v.replace('"masking":"empirical"', '"masking":"gaussian"'),
    )
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


@pytest.mark.parametrize("level", [0, 1, 3])
@pytest.mark.parametrize("api", ["load_session", "restore_model", "load_session_threaded"])
def test_edited_weight_is_caught_at_every_level(
    make_encrypted, level: int, api: str, monkeypatch
) -> None:
    """Each level checks the model with its own tag: none lets an edit through, whether
    the check runs before the session is built or beside it (large models)."""
    from onnx_selenc._load import opened as _opened
    from onnx_selenc._load import session as _session
    from onnx_selenc._onnx import stripped as _stripped

    if api == "load_session_threaded":
        monkeypatch.setattr(_opened, "_INLINE_TAG_BYTES", 0)
        monkeypatch.setattr(_session, "_MEMORY_THRESHOLD", 0)
        monkeypatch.setattr(_stripped, "STRIP_THRESHOLD", 0)
        api = "load_session"
    enc, key = make_encrypted(tm.cnn(), levels=3)
    model = onnx.load(enc)
    w = next(i for i in model.graph.initializer if i.name == "w2")
    values = onnx.numpy_helper.to_array(w).copy()
    values.flat[-1] += 0.5
    w.CopyFrom(onnx.numpy_helper.from_array(values, "w2"))
    enc.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidBundle, match="modified after encryption"):
        getattr(se, api)(enc, key=key, level=level)


def _forge_lower_tiers(enc: Path, owner: se.LevelKey, tier: int) -> tuple[onnx.ModelProto, bytes]:
    """What a tier-``tier`` key holder can do alone: edit a public weight, recompute the
    digest, re-tag levels 0..tier and re-seal their blobs (the manifest changes, so every
    blob they can open is re-sealed under the new manifest)."""
    from onnx_selenc._crypto import seal as _seal
    from onnx_selenc._crypto.digest import model_digest

    held = dataclasses.replace(owner.derive(tier), signing_key=None)  # an exported tier key
    model = onnx.load(enc)
    manifest, blobs = _bundle.read_bundle(model)
    b1 = next(i for i in model.graph.initializer if i.name == "b1")
    b1.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(b1) + 1, "b1"))
    keys = [held.derive(m).material for m in range(tier + 1)]
    taggers = [_seal.new_model_tagger(k) for k in keys]
    doc = manifest.as_dict()
    doc["model_digest"] = model_digest(
        model, None, exclude_metadata=_bundle.BUNDLE_KEYS, taggers=taggers
    )
    doc["model_tags"][: tier + 1] = [t.result() for t in taggers]
    raw = _bundle.canonical_json(doc)
    payloads = [b""] + [
        _seal.open_sealed(keys[m], blobs[m], _bundle.blob_aad(manifest.raw, m))
        for m in range(1, tier + 1)
    ]
    forged = [
        *(_seal.seal(keys[m], payloads[m], _bundle.blob_aad(raw, m)) for m in range(tier + 1)),
        *blobs[tier + 1 :],
    ]
    _bundle.attach(model, raw, forged, manifest.signature or b"")
    return model, raw


@pytest.mark.parametrize("tier", [1, 2, 3])
@pytest.mark.parametrize("signature", ["owner's", "own", "removed"])
def test_a_tier_key_holder_cannot_forge_the_lower_tiers(
    make_encrypted, tmp_path: Path, tier: int, signature: str
) -> None:
    """Issue 13.2: re-tagged and re-sealed levels 0..m of an edited model are refused by
    every key, the forger's own included: the manifest's owner signature cannot be redone
    without the owner key, and another signer is another owner."""
    from onnx_selenc._crypto import sign as _sign

    enc, key = make_encrypted(tm.cnn(), levels=3)
    owner = se.read_key_file(key)
    model, raw = _forge_lower_tiers(enc, owner, tier)
    props = {p.key: p for p in model.metadata_props}
    if signature == "own":  # sign with a key pair of the forger's, naming it
        mine = _sign.new_signing_key()
        doc = json.loads(raw)
        doc["owner_public"] = _sign.public_key(mine).hex()
        raw = _bundle.canonical_json(doc)
        props[_bundle.MANIFEST_KEY].value = raw.decode()
        props["onnx_selenc.signature"].value = _sign.sign_manifest(mine, raw).hex()
    elif signature == "removed":
        model.metadata_props.remove(props["onnx_selenc.signature"])
    forged = tmp_path / "forged.onnx"
    forged.write_bytes(model.SerializeToString())
    accepted = []
    for level in range(4):
        holder = dataclasses.replace(owner.derive(level), signing_key=None)
        for load in (se.load_session, se.restore_model):
            try:
                load(forged, key=holder)  # type: ignore[operator]
                accepted.append((level, load.__name__))
            except (InvalidBundle, KeyMismatch, FormatError):
                pass
    assert accepted == []
    with pytest.raises((InvalidBundle, KeyMismatch, FormatError)):
        se.load_session(forged, key=owner)


def test_the_genuine_model_still_loads_at_every_tier(make_encrypted) -> None:
    enc, key = make_encrypted(tm.cnn(), levels=3)
    owner = se.read_key_file(key)
    for level in range(4):
        se.restore_model(enc, key=dataclasses.replace(owner.derive(level), signing_key=None))


def test_blob_moved_between_models_with_same_key(tmp_path: Path) -> None:
    from onnx_selenc._crypto.keys import new_owner_key
    from onnx_selenc._encrypt.files import encrypt_model

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
    _edit_metadata(
        enc, _bundle.SEALED_KEY, lambda v: base64.b64encode(blobs[0] + blobs[2] + blobs[1]).decode()
    )
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
    assert [layer.address for layer in result.layers] == ["w1"] and len(result.unsupported) == 1


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
    _edit_metadata(enc, _bundle.MANIFEST_KEY, lambda v: v.replace('"version":2', '"version":9'))
    with pytest.raises(FormatError, match="version 9 is unknown"):
        se.load_session(enc, key=key)


def test_level0_output_equals_plain_onnxruntime_on_encrypted_file(make_encrypted) -> None:
    from tests.conftest import ort_run

    model = tm.cnn()
    enc, key = make_encrypted(model)
    feeds = tm.feeds(model)
    assert np.array_equal(
        se.load_session(enc, key=key, level=0).run(None, feeds)[0], ort_run(enc, feeds)[0]
    )
