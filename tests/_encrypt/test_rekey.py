"""Rekey (issue 13.5): the same public weights under a fresh owner key; every old key refused."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc as se
from onnx_selenc._cli.commands import main
from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto import sign as _sign
from onnx_selenc._crypto.digest import model_digest
from onnx_selenc._crypto.keys import KEY_FORMAT, _check
from onnx_selenc._onnx.metadata import SIGNATURE_KEY
from onnx_selenc.exceptions import InvalidBundle, KeyMismatch, UnsignedModel
from tests import tiny_models as tm

LEVELS = 3


def _encrypted(tmp_path: Path, *, external: bool = False) -> tuple[Path, Path, onnx.ModelProto]:
    plain = tmp_path / "plain.onnx"
    model = tm.cnn()
    onnx.save(model, plain)
    options = se.EncryptOptions(levels=LEVELS, budget=0.2, seed=0, external_data=external)
    result = se.encrypt(
        plain, tmp_path / "m.enc.onnx", key_file=tmp_path / "owner.key", options=options
    )
    return result.model_files[0], result.key_file, model


def _initializers(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


@pytest.mark.parametrize("external", [False, True])
def test_rekey_keeps_the_public_weights_and_refuses_every_old_key(
    tmp_path: Path, external: bool
) -> None:
    enc, owner, plain = _encrypted(tmp_path, external=external)
    tiers = [se.export_key(owner, m, tmp_path / f"tier{m}.key") for m in range(LEVELS)]
    result = se.rekey(enc, tmp_path / "new.onnx", key_file=owner, new_key_file=tmp_path / "new.key")
    assert result.key_id != result.old_key_id == se.read_key_file(owner).key_id
    assert len(result.model_files) == (2 if external else 1)
    # The public weights are byte for byte the old ones.
    assert _initializers(onnx.load(enc)) == _initializers(onnx.load(result.model_files[0]))
    for old in [owner, *(tmp_path / f"tier{m}.key" for m in range(LEVELS))]:
        with pytest.raises(KeyMismatch):
            se.load_session(result.model_files[0], key=old)
    assert len(tiers) == LEVELS
    # The new owner restores the plain model bit for bit; new tiers load their level.
    if not external:  # (with external data the restored values stay out of the model)
        restored = se.restore_model(result.model_files[0], key=result.key_file)
        assert _initializers(restored.model) == _initializers(plain)
    for m in range(LEVELS):
        tier = se.export_key(result.key_file, m, tmp_path / f"new-tier{m}.key")
        assert se.restore_model(result.model_files[0], key=tier).level == m
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    top = se.load_session(result.model_files[0], key=result.key_file)
    import onnxruntime as ort

    want = ort.InferenceSession(plain.SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(top.run(None, {"x": x})[0], want)


def test_rekey_needs_the_owner_key(tmp_path: Path) -> None:
    enc, owner, _ = _encrypted(tmp_path)
    se.export_key(owner, LEVELS, tmp_path / "top-tier.key")
    top_tier = tmp_path / "top-tier.key"
    with pytest.raises(ValueError, match="owner key"):
        se.rekey(enc, tmp_path / "new.onnx", key_file=top_tier, new_key_file=tmp_path / "n.key")
    assert not (tmp_path / "new.onnx").exists() and not (tmp_path / "n.key").exists()


def test_rekey_refuses_existing_outputs_and_inputs(tmp_path: Path) -> None:
    enc, owner, _ = _encrypted(tmp_path)
    with pytest.raises(FileExistsError):
        se.rekey(enc, tmp_path / "new.onnx", key_file=owner, new_key_file=owner)
    with pytest.raises(ValueError, match="input"):
        se.rekey(enc, enc, key_file=owner, new_key_file=tmp_path / "n.key", overwrite=True)
    (tmp_path / "new.onnx").write_text("precious")
    with pytest.raises(FileExistsError):
        se.rekey(enc, tmp_path / "new.onnx", key_file=owner, new_key_file=tmp_path / "n.key")
    assert (tmp_path / "new.onnx").read_text() == "precious" and not (tmp_path / "n.key").exists()


def _as_format_1(
    enc: Path, owner_path: Path, tmp_path: Path, *, keep_key_id: bool = False, trojan: bool = False
) -> tuple[Path, Path]:
    """The model and owner key as onnx-selenc 0.2 wrote them: no owner key pair, no
    signature, the format-1 manifest (with its allocation parameters and layer count).

    ``keep_key_id``: keep the format-2 key id (a downgrade); ``trojan``: edit a public
    weight first. Only the top level's material is used, so a top-tier key will do."""
    owner = se.read_key_file(owner_path)
    model = onnx.load(enc)
    if trojan:
        bias = next(t for t in model.graph.initializer if t.name == "b1")
        bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 1, "b1"))
    manifest, blobs = _bundle.read_bundle(model)
    keys = [owner.derive(m).material for m in range(LEVELS + 1)]
    payloads = [
        _seal.open_sealed(keys[m], blobs[m], _bundle.blob_aad(manifest.raw, m))
        for m in range(1, LEVELS + 1)
    ]
    taggers = [_seal.new_model_tagger(k) for k in keys]
    doc = manifest.as_dict()
    for field in ("owner_public", "signature"):
        del doc[field]
    doc["version"] = 1
    doc["key_id"] = manifest.key_id if keep_key_id else _seal.key_id(owner.level0())
    doc["encrypted"]["layers"] = 2
    doc["selection"] = {"importance": "magnitude", "allocation": "balanced", "budget": 0.2,
                        "masking": "empirical", "layers": [], "level_order": "most-important-first",
                        "level_fractions": [1 / 3, 2 / 3, 1.0]}  # fmt: skip
    props = [p for p in model.metadata_props if p.key != SIGNATURE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    doc["model_digest"] = model_digest(
        model, None, exclude_metadata=_bundle.BUNDLE_KEYS, taggers=taggers
    )
    doc["model_tags"] = [t.result() for t in taggers]
    raw = _bundle.canonical_json(doc)
    sealed = [_seal.seal(keys[0], b"", _bundle.blob_aad(raw, 0))] + [
        _seal.seal(keys[m], payloads[m - 1], _bundle.blob_aad(raw, m)) for m in range(1, LEVELS + 1)
    ]
    doc["blobs"] = _bundle.blob_layout([len(b) for b in sealed])
    raw = _bundle.canonical_json(doc)
    sealed = [_seal.seal(keys[0], b"", _bundle.blob_aad(raw, 0))] + [
        _seal.seal(keys[m], payloads[m - 1], _bundle.blob_aad(raw, m)) for m in range(1, LEVELS + 1)
    ]
    for p in model.metadata_props:
        if p.key == _bundle.MANIFEST_KEY:
            p.value = raw.decode()
        elif p.key == _bundle.SEALED_KEY:
            p.value = base64.b64encode(b"".join(sealed)).decode()
    old_model = tmp_path / "v1.onnx"
    old_model.write_bytes(model.SerializeToString())
    key_doc = {"format": KEY_FORMAT, "version": 1, "key_id": doc["key_id"], "level": LEVELS,
               "levels": LEVELS, "chain": _seal.CHAIN_ID, "key": owner.material.hex()}  # fmt: skip
    key_doc["check"] = _check(key_doc)
    old_key = tmp_path / "v1-owner.key"
    old_key.write_text(json.dumps(key_doc))
    return old_model, old_key


def test_an_unsigned_model_is_refused_and_rekey_signs_it(tmp_path: Path) -> None:
    enc, owner, plain = _encrypted(tmp_path)
    v1_model, v1_key = _as_format_1(enc, owner, tmp_path)
    assert se.read_key_file(v1_key).owner_public is None  # format-1 keys are still read
    with pytest.raises(UnsignedModel, match="rekey"):
        se.load_session(v1_model, key=v1_key)
    new_owner = se.read_key_file(owner)
    with pytest.raises(UnsignedModel):  # a new key does not make an unsigned model valid
        se.restore_model(v1_model, key=dataclasses.replace(new_owner, signing_key=None))
    result = se.rekey(
        v1_model, tmp_path / "v2.onnx", key_file=v1_key, new_key_file=tmp_path / "v2.key"
    )
    manifest = se.inspect_model(result.model_files[0]).manifest
    assert manifest["version"] == 2 and "allocation" not in manifest["selection"]
    assert "layers" not in manifest["encrypted"]
    restored = se.restore_model(result.model_files[0], key=result.key_file)
    assert _initializers(restored.model) == _initializers(plain)
    # Nothing proves an unsigned file unchanged: the owner gets its digest to compare.
    assert not result.signed_input
    assert result.model_digest == _bundle.read_bundle(onnx.load(v1_model))[0].model_digest


def test_a_downgraded_trojan_from_a_top_tier_holder_is_refused(tmp_path: Path) -> None:
    """Issue 25.2: a top-tier customer edits the model, writes it unsigned (format 1)
    keeping the format-2 key id and re-seals every level; the owner must not sign it."""
    enc, owner, _ = _encrypted(tmp_path)
    top_tier = tmp_path / "top-tier.key"
    assert se.export_key(owner, LEVELS, top_tier).signing_key is None
    trojan, _ = _as_format_1(enc, top_tier, tmp_path, keep_key_id=True, trojan=True)
    out, new_key = tmp_path / "signed.onnx", tmp_path / "new-owner.key"
    with pytest.raises(InvalidBundle, match="unsigned"):
        se.rekey(trojan, out, key_file=owner, new_key_file=new_key)
    assert not out.exists() and not new_key.exists()
    code = main(["rekey", str(trojan), "--key", str(owner), "-o", str(out), "--keys", str(new_key)])
    assert code == 5 and not out.exists()


def test_rekey_command_prints_the_model_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enc, owner, _ = _encrypted(tmp_path)
    v1_model, v1_key = _as_format_1(enc, owner, tmp_path)
    argv = ["rekey", str(v1_model), "--key", str(v1_key), "-o", str(tmp_path / "n.onnx")]
    assert main([*argv, "--keys", str(tmp_path / "n.key")]) == 0
    out = capsys.readouterr().out
    digest = _bundle.read_bundle(onnx.load(v1_model))[0].model_digest
    assert digest in out and "unsigned" in out
    argv = ["rekey", str(tmp_path / "n.onnx"), "--key", str(tmp_path / "n.key")]
    assert (
        main([*argv, "-o", str(tmp_path / "m.onnx"), "--keys", str(tmp_path / "m.key"), "--json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["model_digest"] == digest and doc["signed_input"] is True


def test_rekey_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc, owner, _ = _encrypted(tmp_path)
    argv = ["rekey", str(enc), "--key", str(owner), "-o", str(tmp_path / "n.onnx")]
    assert main([*argv, "--keys", str(tmp_path / "n.key")]) == 0
    assert "now refused" in capsys.readouterr().out
    assert main([*argv, "--keys", str(tmp_path / "m.key")]) == 1  # the output exists
    assert main(["keys", "info", str(tmp_path / "n.key"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["owner"] is True


def test_signature_of_another_manifest_is_refused(tmp_path: Path) -> None:
    enc, owner, _ = _encrypted(tmp_path)
    (tmp_path / "b").mkdir()
    _, other_owner, _ = _encrypted(tmp_path / "b")
    model = onnx.load(enc)
    manifest, _ = _bundle.read_bundle(model)
    signer = se.read_key_file(other_owner).signing_key
    assert signer is not None
    for p in model.metadata_props:
        if p.key == SIGNATURE_KEY:  # a valid signature, by another owner, of this manifest
            p.value = _sign.sign_manifest(signer, manifest.raw).hex()
    enc.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidBundle, match="signature"):
        se.load_session(enc, key=owner)
