"""Key files and the level chain."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto.keys import (
    LevelKey,
    new_owner_key,
    parse_key_file,
    read_key_file,
    write_key_file,
)
from onnx_selenc._crypto.tiers import export_key
from onnx_selenc.exceptions import InvalidBundle, KeyFileError, LevelNotGranted


def test_chain_goes_down_not_up() -> None:
    top = new_owner_key(5)
    keys = [top.derive(m) for m in range(6)]
    assert len({k.material for k in keys}) == 6
    assert keys[2].derive(1).material == keys[1].material
    assert all(k.key_id == top.key_id for k in keys)
    with pytest.raises(LevelNotGranted):
        keys[2].derive(3)


def test_key_file_round_trip_and_permissions(tmp_path: Path) -> None:
    key = new_owner_key(3)
    path = write_key_file(tmp_path / "k.key", key)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_key_file(path) == key
    doc = json.loads(path.read_text())
    assert doc["format"] == "onnx-selenc-key" and doc["level"] == 3
    assert key.material.hex() not in repr(key)


def test_truncated_key_file(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "k.key", new_owner_key(3))
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 3):
        with pytest.raises(KeyFileError):
            parse_key_file(data[:cut])


@pytest.mark.parametrize("field", ["key", "key_id", "level"])
def test_corrupted_key_file(tmp_path: Path, field: str) -> None:
    path = write_key_file(tmp_path / "k.key", new_owner_key(3))
    doc = json.loads(path.read_text())
    value = doc[field]
    doc[field] = (
        (value[:-1] + ("0" if value[-1] != "0" else "1")) if isinstance(value, str) else value - 1
    )
    with pytest.raises(KeyFileError, match="corrupted"):
        parse_key_file(json.dumps(doc).encode())


def test_flipped_byte_anywhere_in_key_file(tmp_path: Path) -> None:
    data = bytearray(write_key_file(tmp_path / "k.key", new_owner_key(2)).read_bytes())
    for i in range(0, len(data), 7):
        bad = bytearray(data)
        bad[i] ^= 0x04
        try:
            key = parse_key_file(bytes(bad))
        except KeyFileError:
            continue
        # Only whitespace-insensitive flips can survive; they must not change the key.
        assert key == parse_key_file(bytes(data))


def test_unknown_version_and_fields(tmp_path: Path) -> None:
    doc = json.loads(write_key_file(tmp_path / "k.key", new_owner_key(2)).read_text())
    with pytest.raises(KeyFileError, match="version 9"):
        parse_key_file(json.dumps({**doc, "version": 9}).encode())
    with pytest.raises(KeyFileError, match="unknown fields"):
        parse_key_file(json.dumps({**doc, "extra": 1}).encode())


def test_passphrase_protection(tmp_path: Path) -> None:
    key = new_owner_key(3)
    path = write_key_file(tmp_path / "k.key", key, passphrase="correct horse")
    assert key.material.hex() not in path.read_text()
    assert read_key_file(path, passphrase="correct horse") == key
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        read_key_file(path, passphrase="wrong")
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        read_key_file(path)


def test_export_key(tmp_path: Path) -> None:
    owner = write_key_file(tmp_path / "owner.key", new_owner_key(4))
    tier = export_key(owner, 2, tmp_path / "t2.key", new_passphrase="pw")
    assert read_key_file(tmp_path / "t2.key", passphrase="pw") == tier
    assert tier.level == 2 and tier.material == read_key_file(owner).derive(2).material
    with pytest.raises(FileExistsError):
        export_key(owner, 1, tmp_path / "t2.key")
    with pytest.raises(LevelNotGranted):
        export_key(tmp_path / "t2.key", 3, tmp_path / "t3.key", passphrase="pw")


def test_aes_gcm_known_answer_through_private_seam() -> None:
    key = bytes(range(32))
    nonce = bytes(12)
    blob = _seal._seal_with_nonce(key, nonce, b"onnx-selenc", b"aad")
    # Independent computation with the primitives themselves.
    sub = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"onnx-selenc/v1/seal").derive(
        key
    )
    assert blob == nonce + AESGCM(sub).encrypt(nonce, b"onnx-selenc", b"aad")
    # Golden value: the sealed format must not drift between releases.
    assert blob.hex() == GOLDEN_BLOB
    assert _seal.open_sealed(key, blob, b"aad") == b"onnx-selenc"
    with pytest.raises(InvalidBundle):
        _seal.open_sealed(key, blob, b"other aad")
    with pytest.raises(InvalidBundle):
        _seal.open_sealed(key, blob[:20], b"aad")


def test_chain_known_answer() -> None:
    assert _seal.chain_down(bytes(32), 2, 0).hex() == GOLDEN_CHAIN
    assert LevelKey("x", 2, 2, bytes(32)).level0() == bytes.fromhex(GOLDEN_CHAIN)


def test_fresh_nonces() -> None:
    key = _seal.generate_key()
    assert _seal.seal(key, b"x", b"") != _seal.seal(key, b"x", b"")


GOLDEN_BLOB = "000000000000000000000000d1d8bcd9f8517c10bd279379c4aec45a73c5590434fd84dd2b0e9f"
GOLDEN_CHAIN = "7e1de4cb2b263271bd649c20891ead55dfc745d2db855a7deb239cad8003172a"


def test_only_the_owner_key_file_holds_the_signing_key(tmp_path: Path) -> None:
    """Issue 13.2: tier keys, the top tier's included, carry the owner's public key only."""
    owner = write_key_file(tmp_path / "owner.key", new_owner_key(3))
    back = read_key_file(owner)
    assert back.is_owner and back.signing_key is not None and back.owner_public is not None
    for level in range(4):
        tier = export_key(owner, level, tmp_path / f"t{level}.key")
        doc = json.loads((tmp_path / f"t{level}.key").read_text())
        assert "signing_key" not in doc and doc["owner_public"] == back.owner_public.hex()
        assert not tier.is_owner and read_key_file(tmp_path / f"t{level}.key") == tier


def test_a_protected_owner_key_wraps_its_signing_key(tmp_path: Path) -> None:
    key = new_owner_key(2)
    path = write_key_file(tmp_path / "k.key", key, passphrase="pw")
    assert "signing_key" not in json.loads(path.read_text())
    assert read_key_file(path, passphrase="pw") == key


def test_a_key_file_naming_another_owner_is_corrupted(tmp_path: Path) -> None:
    """The key id binds the owner's public key: swapping it in a tier key file is caught."""
    from onnx_selenc._crypto import sign as _sign
    from onnx_selenc._crypto.keys import _check

    owner = write_key_file(tmp_path / "owner.key", new_owner_key(2))
    export_key(owner, 1, tmp_path / "t.key")
    doc = json.loads((tmp_path / "t.key").read_text())
    doc["owner_public"] = _sign.public_key(_sign.new_signing_key()).hex()
    doc["check"] = _check({k: v for k, v in doc.items() if k != "check"})
    with pytest.raises(KeyFileError, match="key id"):
        parse_key_file(json.dumps(doc).encode())


def test_key_file_info_needs_no_passphrase(tmp_path: Path) -> None:
    from onnx_selenc._crypto.tiers import key_file_info

    key = new_owner_key(3)
    owner = write_key_file(tmp_path / "owner.key", key, passphrase="secret")
    info = key_file_info(owner)
    assert info["protected"] is True and info["owner"] is True
    assert (info["key_id"], info["level"], info["levels"]) == (key.key_id, 3, 3)
    assert info["owner_public"] == key.owner_public.hex()  # type: ignore[union-attr]
    tier = export_key(owner, 1, tmp_path / "t.key", passphrase="secret", new_passphrase="x")
    assert key_file_info(tmp_path / "t.key")["owner"] is False and tier.level == 1
    assert "secret" not in json.dumps(info)


@pytest.mark.parametrize("n,r,p", [(2**20, 32, 16), (2**17, 8, 1), (2**15, 9, 1), (2**15, 8, 3)])
def test_hostile_scrypt_parameters_are_refused_before_any_work(
    tmp_path: Path, n: int, r: int, p: int
) -> None:
    """Issue 13.5: a key file may not ask for minutes and GiBs per load."""
    import time

    from onnx_selenc._crypto.keys import _check

    doc = json.loads(
        write_key_file(tmp_path / "k.key", new_owner_key(2), passphrase="pw").read_text()
    )
    doc["protected"].update(n=n, r=r, p=p)
    doc["check"] = _check({k: v for k, v in doc.items() if k != "check"})
    start = time.perf_counter()
    with pytest.raises(KeyFileError, match="out of range"):
        parse_key_file(json.dumps(doc).encode(), passphrase="pw")
    assert time.perf_counter() - start < 1.0
