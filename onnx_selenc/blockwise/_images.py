"""Client-side image encryption and decryption (vectorised numpy).

Domain (see :class:`~._key.ImageDomain`): the transform acts on pixels ``x`` in
``[0, pixel_max]``, *before* any client-side normalisation. A uint8 array holds
``p = 0..255`` and stands for ``x = p * pixel_max / 255``; permutation and flip keys
keep it uint8 (``p -> 255 - p`` is the flip) so encryption round-trips exactly,
while orthogonal keys produce real values (returned as float32). Float arrays are
taken to be in the domain already. Blocks are the ``P x P`` tiles of the top-left
``(H // P) * P x (W // P) * P`` region, which is all the stem reads; leftover rows
and columns are left as they are.
"""

from __future__ import annotations

import numpy as np

from onnx_selenc.blockwise._key import BlockKey

_SINGLE = {"NCHW": "CHW", "NHWC": "HWC"}


def _to_nhwc(images: np.ndarray, key: BlockKey, layout: str | None) -> tuple[np.ndarray, str]:
    """Return an ``N, H, W, C`` view and the resolved layout.

    Raises:
        ValueError: If the array does not fit the layout or the key's channel count.
    """
    arr = np.asarray(images)
    if layout is None:
        layout = {4: key.layout, 3: _SINGLE[key.layout], 2: "HW"}.get(arr.ndim, "?")
    layout = layout.upper()
    expected = {"NCHW": 4, "NHWC": 4, "CHW": 3, "HWC": 3, "HW": 2}
    if expected.get(layout) != arr.ndim:
        raise ValueError(
            f"an array of shape {list(arr.shape)} does not match layout {layout!r}"
            " (use NCHW, NHWC, CHW, HWC, or HW for one-channel images)"
        )
    if layout == "HW":
        if key.channels != 1:
            raise ValueError(f"the key is for {key.channels}-channel images, got a 2-D array")
        view = arr[np.newaxis, :, :, np.newaxis]
    else:
        view = arr if "N" in layout else arr[np.newaxis]
        if layout.endswith("CHW"):
            view = view.transpose(0, 2, 3, 1)
    if view.shape[3] != key.channels:
        raise ValueError(
            f"images have {view.shape[3]} channels in layout {layout}, the key needs {key.channels}"
        )
    if view.shape[1] < key.patch or view.shape[2] < key.patch:
        raise ValueError(f"images of {view.shape[1]}x{view.shape[2]} are smaller than one block")
    return view, layout


def _from_nhwc(view: np.ndarray, layout: str) -> np.ndarray:
    if layout == "HW":
        return view[0, :, :, 0]
    if layout.endswith("CHW"):
        view = view.transpose(0, 3, 1, 2)
    return view if "N" in layout else view[0]


def _grid(view: np.ndarray, key: BlockKey) -> tuple[int, int]:
    gh, gw = view.shape[1] // key.patch, view.shape[2] // key.patch
    if key.grid is not None and (gh, gw) != key.grid:
        raise ValueError(
            f"images have a {gh}x{gw} block grid, the key scrambles a"
            f" {key.grid[0]}x{key.grid[1]} grid (size {key.grid[0] * key.patch}x"
            f"{key.grid[1] * key.patch})"
        )
    return gh, gw


def _blocks(view: np.ndarray, p: int, gh: int, gw: int) -> np.ndarray:
    n, c = view.shape[0], view.shape[3]
    tiles = view[:, : gh * p, : gw * p].reshape(n, gh, p, gw, p, c)
    return tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, p * p * c)


def _unblocks(blocks: np.ndarray, view: np.ndarray, p: int, gh: int, gw: int) -> np.ndarray:
    n, c = view.shape[0], view.shape[3]
    out = np.array(view, dtype=blocks.dtype, copy=True)
    tiles = blocks.reshape(n, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    out[:, : gh * p, : gw * p] = tiles.reshape(n, gh * p, gw * p, c)
    return out


def _check_dtype(arr: np.ndarray) -> None:
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"images must be uint8 (0..255) or float, got {arr.dtype}")


def encrypt_images(images: np.ndarray, key: BlockKey, *, layout: str | None = None) -> np.ndarray:
    """Encrypt images block by block with ``key``.

    Args:
        images: ``N x C x H x W`` / ``N x H x W x C`` (or one image without ``N``), uint8
            or float in ``[0, pixel_max]``.
        key: The block-wise key.
        layout: Array layout (default: the key's model layout, without ``N`` for 3-D
            arrays): "NCHW", "NHWC", "CHW", "HWC" or "HW".

    Returns:
        Encrypted images in the same layout: uint8 for uint8 input with a permutation
        key, float32 for uint8 input with an orthogonal key, else the input dtype.

    Raises:
        ValueError: If the shape, layout, channels, dtype or block grid do not fit.
    """
    arr = np.asarray(images)
    _check_dtype(arr)
    view, layout = _to_nhwc(arr, key, layout)
    gh, gw = _grid(view, key)
    tr = key.derive()
    blocks = _blocks(view, key.patch, gh, gw)
    if arr.dtype == np.uint8 and tr.perm is not None:
        out = np.where(tr.flip, np.uint8(255) - blocks, blocks)[..., tr.perm]
    else:
        scale = key.domain.pixel_max / 255.0 if arr.dtype == np.uint8 else 1.0
        out = tr.forward(blocks.astype(np.float64) * scale)
        out = out.astype(np.float32 if arr.dtype == np.uint8 else arr.dtype)
        view = view.astype(out.dtype) * (scale if arr.dtype == np.uint8 else 1.0)
    if tr.block_perm is not None:
        out = out[:, tr.block_perm]
    return _from_nhwc(_unblocks(out, view, key.patch, gh, gw), layout)


def decrypt_images(
    images: np.ndarray,
    key: BlockKey,
    *,
    layout: str | None = None,
    dtype: np.dtype | str | type | None = None,
) -> np.ndarray:
    """Invert :func:`encrypt_images`.

    Args:
        images: Encrypted images, as returned by :func:`encrypt_images`.
        key: The key they were encrypted with.
        layout: Array layout, as for :func:`encrypt_images`.
        dtype: Output dtype (default: the input dtype). ``uint8`` from float input
            rounds ``x * 255 / pixel_max`` and clips to 0..255.

    Returns:
        The plain images (exact for uint8 permutation keys).

    Raises:
        ValueError: If the shape, layout, channels, dtype or block grid do not fit, or
            uint8 images are given for an orthogonal key (its ciphertexts are real).
    """
    arr = np.asarray(images)
    _check_dtype(arr)
    view, layout = _to_nhwc(arr, key, layout)
    gh, gw = _grid(view, key)
    tr = key.derive()
    blocks = _blocks(view, key.patch, gh, gw)
    if tr.block_perm is not None:
        unscrambled = np.empty_like(blocks)
        unscrambled[:, tr.block_perm] = blocks
        blocks = unscrambled
    target = np.dtype(dtype) if dtype is not None else arr.dtype
    if arr.dtype == np.uint8:
        if tr.perm is None:
            raise ValueError(
                "orthogonal-encrypted images are real-valued: a uint8 array cannot"
                " be one (keep them as float .npy)"
            )
        plain = np.empty_like(blocks)
        plain[..., tr.perm] = blocks
        plain = np.where(tr.flip, np.uint8(255) - plain, plain)
        result = _from_nhwc(_unblocks(plain, view, key.patch, gh, gw), layout)
        if target == np.uint8:
            return result
        return (result.astype(np.float64) * key.domain.pixel_max / 255.0).astype(target)
    plain = tr.inverse(blocks.astype(np.float64))
    result = _from_nhwc(_unblocks(plain, view.astype(np.float64), key.patch, gh, gw), layout)
    if target == np.uint8:
        return np.clip(np.rint(result * 255.0 / key.domain.pixel_max), 0, 255).astype(np.uint8)
    return result.astype(target)


def to_model_input(
    images: np.ndarray,
    key: BlockKey,
    *,
    layout: str | None = None,
    dtype: np.dtype | str | type = np.float32,
) -> np.ndarray:
    """Turn (encrypted) images into the float tensor the encrypted model takes.

    Scales uint8 to ``[0, pixel_max]``, applies the key's client-side normalisation
    ``(x - mean) / std`` when it has one, adds the batch axis to a single image and
    returns the key's model layout.

    Raises:
        ValueError: If the shape, layout or channels do not fit.
    """
    arr = np.asarray(images)
    _check_dtype(arr)
    view, _ = _to_nhwc(arr, key, layout)
    x = view.astype(np.float64)
    if arr.dtype == np.uint8:
        x = x * (key.domain.pixel_max / 255.0)
    if key.domain.mean is not None and key.domain.std is not None:
        x = (x - np.asarray(key.domain.mean)) / np.asarray(key.domain.std)
    if key.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x.astype(dtype))
