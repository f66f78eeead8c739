"""Block-wise keys: derivation, key space, and the key file."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnx_selenc.blockwise import BlockKey, ImageDomain, encrypt_images
from onnx_selenc.blockwise._derive import derive_transform, keyed_orthogonal, keyed_permutation
from onnx_selenc.exceptions import KeyFileError

SECRET = bytes(range(32))


def _key(**kw: object) -> BlockKey:
    params: dict[str, object] = {"secret": SECRET, "patch": 4, "channels": 3}
    params.update(kw)
    return BlockKey(**params)  # type: ignore[arg-type]


def test_derivation_is_deterministic_and_key_dependent() -> None:
    a = keyed_permutation(SECRET, "perm/P4C3", 48)
    assert sorted(a.tolist()) == list(range(48))
    assert np.array_equal(a, keyed_permutation(SECRET, "perm/P4C3", 48))
    assert not np.array_equal(a, keyed_permutation(bytes(32), "perm/P4C3", 48))
    assert not np.array_equal(a, keyed_permutation(SECRET, "perm/P2C3", 48))
    q = keyed_orthogonal(SECRET, "orth", 48)
    np.testing.assert_allclose(q @ q.T, np.eye(48), atol=1e-12)
    np.testing.assert_array_equal(q, keyed_orthogonal(SECRET, "orth", 48))
    tr = derive_transform(SECRET, 4, 3, False, True, (4, 4), 1.0)
    assert 10 < tr.flip.sum() < 38 and sorted(tr.block_perm.tolist()) == list(range(16))
    assert not tr.perm.flags.writeable


def test_transform_inverse_and_matrix_form() -> None:
    rng = np.random.default_rng(0)
    for orth in (False, True):
        tr = derive_transform(SECRET, 2, 3, orth, True, None, 1.0)
        b = rng.random((5, 12))
        np.testing.assert_allclose(tr.inverse(tr.forward(b)), b, atol=1e-12)
        np.testing.assert_allclose(tr.forward(b), b @ tr.linear().T + tr.offset(), atol=1e-12)


def test_key_space_bits() -> None:
    assert _key(patch=2).transform_bits == pytest.approx(math.log2(math.factorial(12)))
    assert _key(patch=2).weak and 28 < _key(patch=2).key_space_bits < 29
    assert _key(patch=7).key_space_bits == 256.0  # 147! ~ 2**848, capped by the secret
    assert _key(patch=2, flip=True).transform_bits == pytest.approx(28.835 + 12, abs=0.01)
    assert math.isinf(_key(patch=2, transform="orthogonal").transform_bits)
    assert not _key(patch=2, transform="orthogonal").weak


def test_generated_keys_never_leave_images_unchanged() -> None:
    # a 2x2 single-channel permutation is the identity for 1 secret in 24: without the
    # redraw, ~8 of these 200 keys would encrypt nothing
    images = np.random.default_rng(0).random((1, 1, 8, 8))
    for _ in range(200):
        key = BlockKey.generate(patch=2, channels=1)
        assert not key.derive().is_identity
        assert not np.array_equal(encrypt_images(images, key), images)
    assert derive_transform(SECRET, 1, 1, False, False, None, 1.0).is_identity
    with pytest.raises(ValueError, match="only the identity"):
        BlockKey.generate(patch=1, channels=1)
    BlockKey.generate(patch=1, channels=1, flip=True)  # two transforms: one is not identity


def test_key_file_round_trip_and_permissions(tmp_path: Path) -> None:
    key = _key(
        flip=True,
        scramble=True,
        grid=(8, 8),
        layout="NHWC",
        domain=ImageDomain(1.0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    )
    path = tmp_path / "k.key"
    key.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert BlockKey.load(path) == key
    body = json.loads(path.read_text())
    assert body["format"] == "onnx-selenc-blockwise-key" and body["version"] == 1
    assert body["key_id"] == key.key_id and len(key.key_id) == 32
    assert key.key_id not in SECRET.hex()
    assert list(body) == sorted(body)
    with pytest.raises(FileExistsError):
        key.save(path)
    assert "secret" not in repr(key) and SECRET.hex() not in repr(key)


def _corrupt(path: Path, fn: Callable[[dict[str, Any]], object]) -> None:
    body = json.loads(path.read_text())
    fn(body)
    path.write_text(json.dumps(body))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:60]), "not valid JSON"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"\xff\xfe garbage"), "not valid JSON"),
        (lambda p: p.write_text("[1, 2]"), "not a JSON object"),
        (
            lambda p: _corrupt(p, lambda b: b.update(format="onnx-selenc-key")),
            "not a block-wise key file",
        ),
        (lambda p: _corrupt(p, lambda b: b.update(version=2)), "unknown key file version 2"),
        (lambda p: _corrupt(p, lambda b: b.update(patch=8)), "checksum mismatch"),
        (
            lambda p: _corrupt(p, lambda b: b.update(key=b["key"][:-4] + "AAA=")),
            "checksum mismatch",
        ),
        (lambda p: _corrupt(p, lambda b: b.pop("check")), "missing its 'check'"),
        (lambda p: p.unlink(), "cannot read key file"),
    ],
)
def test_bad_key_files(tmp_path: Path, mutate: Callable[[Path], object], message: str) -> None:
    path = tmp_path / "k.key"
    _key().save(path)
    mutate(path)
    with pytest.raises(KeyFileError, match=message):
        BlockKey.load(path)


def test_consistent_but_invalid_fields_are_reported(tmp_path: Path) -> None:
    from onnx_selenc.blockwise._key import _checksum

    path = tmp_path / "k.key"
    _key().save(path)
    body = json.loads(path.read_text())
    body["patch"] = True
    body["check"] = _checksum(body)
    path.write_text(json.dumps(body))
    with pytest.raises(KeyFileError, match="must be an integer"):
        BlockKey.load(path)
    body["patch"] = 4
    body["key_id"] = "0" * 32
    body["check"] = _checksum(body)
    path.write_text(json.dumps(body))
    with pytest.raises(KeyFileError, match="key_id does not match"):
        BlockKey.load(path)
