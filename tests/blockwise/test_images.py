"""Client-side image encryption: layouts, dtypes, exact round trips, block structure."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_selenc.blockwise import BlockKey, ImageDomain, decrypt_images, encrypt_images
from onnx_selenc.blockwise import to_model_input as model_input

RNG = np.random.default_rng(7)


def _key(**kw: object) -> BlockKey:
    params: dict[str, object] = {"patch": 4, "channels": 3}
    params.update(kw)
    return BlockKey.generate(**params)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scramble", [False, True])
def test_uint8_round_trip_is_exact(flip: bool, scramble: bool) -> None:
    key = _key(flip=flip, scramble=scramble, grid=(4, 5) if scramble else None)
    x = RNG.integers(0, 256, (3, 3, 17, 22)).astype(np.uint8)  # remainders: 1 row, 2 cols
    enc = encrypt_images(x, key)
    assert enc.dtype == np.uint8 and enc.shape == x.shape
    assert not np.array_equal(enc, x)
    np.testing.assert_array_equal(decrypt_images(enc, key), x)
    # pixels outside the block grid are not read by the stem and are left alone
    np.testing.assert_array_equal(enc[:, :, 16:], x[:, :, 16:])
    np.testing.assert_array_equal(enc[:, :, :, 20:], x[:, :, :, 20:])
    # the multiset of values of each block is kept without flip (it is a permutation)
    if not flip and not scramble:
        blocks = x[:, :, :4, :4].reshape(3, -1)
        np.testing.assert_array_equal(np.sort(enc[:, :, :4, :4].reshape(3, -1)), np.sort(blocks))


def test_uint8_and_float_paths_agree() -> None:
    key = _key(flip=True)
    x = RNG.integers(0, 256, (2, 3, 8, 8)).astype(np.uint8)
    enc_u8 = encrypt_images(x, key).astype(np.float64) / 255
    enc_f = encrypt_images(x.astype(np.float64) / 255, key)
    np.testing.assert_allclose(enc_u8, enc_f, atol=1e-12)
    # flip is the negative-positive transform 255 - p on the selected positions
    flipped = encrypt_images(np.zeros_like(x), key)
    assert set(np.unique(flipped).tolist()) == {0, 255}


def test_orthogonal_round_trip() -> None:
    key = _key(transform="orthogonal", flip=True)
    x = RNG.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    enc = encrypt_images(x, key, layout="NHWC")
    assert enc.dtype == np.float32
    back = decrypt_images(enc.astype(np.float64), key, layout="NHWC", dtype=np.uint8)
    np.testing.assert_array_equal(back, x)
    xf = x.astype(np.float64) / 255
    np.testing.assert_allclose(
        decrypt_images(encrypt_images(xf, key, layout="NHWC"), key, layout="NHWC"), xf, atol=1e-12
    )
    # block norms are preserved by the orthogonal part (without the flip offset)
    plain_key = _key(transform="orthogonal")
    e = encrypt_images(xf, plain_key, layout="NHWC")
    np.testing.assert_allclose(np.linalg.norm(e[:, :4, :4]), np.linalg.norm(xf[:, :4, :4]))
    with pytest.raises(ValueError, match="real-valued"):
        decrypt_images(x, key, layout="NHWC")


def test_layouts_are_consistent() -> None:
    key = _key(flip=True, layout="NHWC")
    nchw = RNG.integers(0, 256, (2, 3, 8, 12)).astype(np.uint8)
    nhwc = nchw.transpose(0, 2, 3, 1)
    enc_nhwc = encrypt_images(nhwc, key)  # default: the key's layout
    np.testing.assert_array_equal(
        encrypt_images(nchw, key, layout="NCHW").transpose(0, 2, 3, 1), enc_nhwc
    )
    np.testing.assert_array_equal(encrypt_images(nhwc[0], key), enc_nhwc[0])  # HWC
    np.testing.assert_array_equal(
        encrypt_images(nchw[0], key, layout="CHW"), enc_nhwc[0].transpose(2, 0, 1)
    )
    gray = _key(channels=1, patch=2)
    img = RNG.integers(0, 256, (6, 6)).astype(np.uint8)
    np.testing.assert_array_equal(
        encrypt_images(img, gray), encrypt_images(img[None, None], gray)[0, 0]
    )


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (np.zeros((2, 4, 8, 8), np.uint8), {}, "channels"),
        (np.zeros((2, 3, 8, 8), np.int32), {}, "uint8"),
        (np.zeros((3, 8, 8), np.uint8), {"layout": "NCHW"}, "does not match layout"),
        (np.zeros((2, 3, 2, 2), np.uint8), {}, "smaller than one block"),
    ],
)
def test_bad_images(images: np.ndarray, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encrypt_images(images, _key(), **kwargs)


def test_scramble_grid_must_match() -> None:
    key = _key(scramble=True, grid=(2, 2))
    with pytest.raises(ValueError, match="3x3 block grid, the key scrambles a 2x2 grid"):
        encrypt_images(np.zeros((1, 3, 12, 12), np.uint8), key)


def test_scramble_moves_whole_blocks() -> None:
    key = _key(scramble=True, grid=(2, 3))
    x = RNG.integers(0, 256, (1, 3, 8, 12)).astype(np.uint8)
    base = encrypt_images(x, _key_like(key, scramble=False, grid=None))
    enc = encrypt_images(x, key)
    pi = key.derive().block_perm
    for j, tile in enumerate(_tiles(enc)):
        np.testing.assert_array_equal(tile, _tiles(base)[pi[j]])


def _tiles(a: np.ndarray) -> list[np.ndarray]:
    return [a[0, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] for r in range(2) for c in range(3)]


def _key_like(key: BlockKey, **changes: object) -> BlockKey:
    params = {
        f: getattr(key, f)
        for f in (
            "secret",
            "patch",
            "channels",
            "layout",
            "transform",
            "flip",
            "scramble",
            "grid",
            "domain",
        )
    }
    params.update(changes)
    return BlockKey(**params)  # type: ignore[arg-type]


def test_model_input() -> None:
    key = _key(domain=ImageDomain(1.0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    x = np.full((3, 4, 4), 255, np.uint8)
    out = model_input(x, key)
    assert out.shape == (1, 3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0)
    nhwc = _key(layout="NHWC")
    assert model_input(np.zeros((4, 4, 3), np.uint8), nhwc).shape == (1, 4, 4, 3)
