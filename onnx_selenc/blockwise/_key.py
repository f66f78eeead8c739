"""The block-wise key: generation, key id, key space, and the JSON key file.

Key file (canonical JSON, sorted keys, written with mode 0600)::

    {"format": "onnx-selenc-blockwise-key", "version": 1,
     "patch": 4, "channels": 3, "layout": "NCHW", "block_order": "dy,dx,c",
     "transform": "permutation" | "orthogonal", "flip": false,
     "scramble": false, "grid": null | [rows, cols],
     "pixel_max": 1.0, "mean": null | [...], "std": null | [...],
     "key": "<base64 of 32 bytes>", "key_id": "<32 hex>", "check": "sha256:<64 hex>"}

``check`` is SHA-256 over the compact canonical JSON of every other field, so a
truncated, edited or bit-flipped file is reported instead of silently producing
garbage images.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx_selenc._onnx.files import atomic_write, refuse_existing
from onnx_selenc.blockwise._derive import BlockTransform, derive_transform, log2_factorial, subkey
from onnx_selenc.exceptions import KeyFileError

KEY_FORMAT = "onnx-selenc-blockwise-key"
KEY_VERSION = 1
BLOCK_ORDER = "dy,dx,c"
LAYOUTS = ("NCHW", "NHWC")
TRANSFORMS = ("permutation", "orthogonal")
WEAK_BITS = 128.0
SECRET_BITS = 256.0
_MAX_KEY_FILE = 1 << 20
# the identity has probability <= 1/2 per draw once another transform exists
_IDENTITY_REDRAWS = 64


@dataclass(frozen=True)
class ImageDomain:
    """Where the client-side transform acts.

    Images are pixels in ``[0, pixel_max]`` (uint8 arrays and image files hold
    ``0..255`` and are read as ``p * pixel_max / 255``). The model input is
    ``(x - mean) / std`` per channel when ``mean``/``std`` are set (the client
    normalises *after* encrypting), else ``x`` itself.

    Attributes:
        pixel_max: Value of a white pixel in the image domain.
        mean: Per-channel mean the client subtracts after encryption, or None.
        std: Per-channel std the client divides by after encryption, or None.
    """

    pixel_max: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.pixel_max, int | float) and self.pixel_max > 0):
            raise ValueError(f"pixel_max must be a positive number, got {self.pixel_max!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (or neither)")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("std must not contain zeros")


@dataclass(frozen=True)
class BlockKey:
    """A secret block-wise key and the public parameters it was made for.

    Attributes:
        secret: 32 random bytes (never printed).
        patch: Block size ``P`` (the stem's kernel and stride).
        channels: Channels ``C`` of the stem input.
        layout: Model input layout, "NCHW" or "NHWC".
        transform: "permutation" or "orthogonal".
        flip: Whether the keyed negative-positive flip is applied.
        scramble: Whether whole blocks are moved (needs ``grid``).
        grid: Block grid ``(rows, cols)`` scrambled, or None.
        domain: The image domain the transform acts on.
    """

    secret: bytes = field(repr=False)
    patch: int
    channels: int
    layout: str = "NCHW"
    transform: str = "permutation"
    flip: bool = False
    scramble: bool = False
    grid: tuple[int, int] | None = None
    domain: ImageDomain = ImageDomain()

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("the block-wise secret must be 32 bytes")
        if self.patch < 1 or self.channels < 1:
            raise ValueError("patch and channels must be positive")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.scramble != (self.grid is not None):
            raise ValueError("a scrambling key needs its block grid (and only it has one)")
        for stat in (self.domain.mean, self.domain.std):
            if stat is not None and len(stat) != self.channels:
                raise ValueError(f"mean/std need {self.channels} values, got {len(stat)}")

    @classmethod
    def generate(cls, **params: Any) -> BlockKey:
        """Create a key with a fresh secret from :func:`secrets.token_bytes`.

        A secret whose transform is the identity (it would leave images, and the
        model, unchanged) is redrawn: with small blocks that draw is not rare
        (1 in 24 for a 2x2 single-channel permutation).

        Args:
            **params: The public fields (``patch``, ``channels``, ``layout``, ...).

        Raises:
            ValueError: If a parameter is invalid, or the parameters admit no
                transform but the identity (a 1x1 single-channel block without
                flip or scrambling).
        """
        for _ in range(_IDENTITY_REDRAWS):
            key = cls(secret=secrets.token_bytes(32), **params)
            if not key.derive().is_identity:
                return key
        # 64 identity draws in a row: the parameters admit no other transform
        raise ValueError(
            f"these key parameters (a {key.patch}x{key.patch} block over {key.channels} "
            "channel(s)) admit only the identity transform: nothing would be encrypted; "
            "add flip, scrambling of several blocks, or use a larger block"
        )

    @property
    def key_id(self) -> str:
        """Public identifier: first 16 bytes (hex) of SHA-256 over an HKDF of the secret."""
        return hashlib.sha256(subkey(self.secret, "key-id")).digest()[:16].hex()

    @property
    def block_length(self) -> int:
        """``L = P * P * C``."""
        return self.patch * self.patch * self.channels

    @property
    def transform_bits(self) -> float:
        """log2 of the number of distinct transforms (inf for the continuous orthogonal key)."""
        if self.transform == "orthogonal":
            return math.inf
        bits = log2_factorial(self.block_length) + (self.block_length if self.flip else 0)
        if self.grid is not None:
            bits += log2_factorial(self.grid[0] * self.grid[1])
        return bits

    @property
    def key_space_bits(self) -> float:
        """Effective key space in bits: the transform space, capped by the 256-bit secret."""
        return min(self.transform_bits, SECRET_BITS)

    @property
    def weak(self) -> bool:
        """True when the key space is below 128 bits."""
        return self.key_space_bits < WEAK_BITS

    def derive(self) -> BlockTransform:
        """Return the concrete keyed transform."""
        return derive_transform(
            self.secret,
            self.patch,
            self.channels,
            self.transform == "orthogonal",
            self.flip,
            self.grid,
            float(self.domain.pixel_max),
        )

    def public_info(self) -> dict[str, Any]:
        """Every field except the secret (safe to print or store in a model)."""
        return {
            "block_order": BLOCK_ORDER,
            "channels": self.channels,
            "flip": self.flip,
            "grid": list(self.grid) if self.grid is not None else None,
            "key_id": self.key_id,
            "layout": self.layout,
            "mean": list(self.domain.mean) if self.domain.mean is not None else None,
            "patch": self.patch,
            "pixel_max": float(self.domain.pixel_max),
            "scramble": self.scramble,
            "std": list(self.domain.std) if self.domain.std is not None else None,
            "transform": self.transform,
        }

    def to_json(self) -> bytes:
        """Serialise as the key file (sorted keys, with the checksum)."""
        body = {"format": KEY_FORMAT, "version": KEY_VERSION, **self.public_info()}
        body["key"] = base64.b64encode(self.secret).decode("ascii")
        body["check"] = _checksum(body)
        return (json.dumps(body, sort_keys=True, indent=2) + "\n").encode("utf-8")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file atomically with mode 0600.

        Raises:
            FileExistsError: If ``path`` exists (a key file is never replaced).
        """
        refuse_existing(path, "key file")
        atomic_write(path, self.to_json(), mode=0o600)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BlockKey:
        """Read and verify a key file.

        Raises:
            KeyFileError: If the file is missing, truncated, malformed, of an unknown
                format or version, or fails its checksum.
        """
        p = Path(path)
        try:
            with p.open("rb") as fh:
                data = fh.read(_MAX_KEY_FILE + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {p}: {exc.strerror or exc}") from exc
        return cls.from_json(data, source=str(p))

    @classmethod
    def from_json(cls, data: bytes, *, source: str = "key file") -> BlockKey:
        """Parse and verify key-file bytes (see :meth:`load`).

        Raises:
            KeyFileError: As for :meth:`load`.
        """
        return _parse(data, source)


def _checksum(body: dict[str, Any]) -> str:
    rest = {k: v for k, v in body.items() if k != "check"}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _parse(data: bytes, source: str) -> BlockKey:
    def bad(why: str) -> KeyFileError:
        return KeyFileError(f"{source}: {why}")

    if len(data) > _MAX_KEY_FILE:
        raise bad("too large to be a block-wise key file")
    if not data.strip():
        raise bad("empty (truncated?)")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not valid JSON (truncated or corrupted?): {exc}") from exc
    if not isinstance(body, dict):
        raise bad("not a JSON object")
    if body.get("format") != KEY_FORMAT:
        raise bad(
            f"not a block-wise key file (format {body.get('format')!r}, expected {KEY_FORMAT!r})"
        )
    version = body.get("version")
    if type(version) is not int or version != KEY_VERSION:
        raise bad(
            f"unknown key file version {version!r} (this onnx-selenc reads version {KEY_VERSION})"
        )
    if not isinstance(body.get("check"), str):
        raise bad("missing its 'check' checksum field")
    try:
        expected = _checksum(body)
    except (TypeError, ValueError) as exc:
        raise bad(f"malformed field values: {exc}") from exc
    if body["check"] != expected:
        raise bad("checksum mismatch: the key file is corrupted or was edited")
    try:
        key = _build(body)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise bad(f"malformed: {exc}") from exc
    if body.get("key_id") != key.key_id:
        raise bad("its key_id does not match its key (corrupted)")
    return key


def _int(body: dict[str, Any], name: str) -> int:
    value = body[name]
    if type(value) is not int:
        raise TypeError(f"field {name!r} must be an integer")
    return value


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body[name]
    if type(value) is not bool:
        raise TypeError(f"field {name!r} must be true or false")
    return value


def _floats(value: Any, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(type(v) in (int, float) for v in value):
        raise TypeError(f"field {name!r} must be null or a list of numbers")
    return tuple(float(v) for v in value)


def _build(body: dict[str, Any]) -> BlockKey:
    if body.get("block_order") != BLOCK_ORDER:
        raise ValueError(f"unsupported block_order {body.get('block_order')!r}")
    secret = base64.b64decode(body["key"], validate=True)
    grid = body["grid"]
    if grid is not None:
        if not (isinstance(grid, list) and len(grid) == 2 and all(type(g) is int for g in grid)):
            raise TypeError("field 'grid' must be null or [rows, cols]")
        grid = (grid[0], grid[1])
    pixel_max = body["pixel_max"]
    if type(pixel_max) not in (int, float):
        raise TypeError("field 'pixel_max' must be a number")
    domain = ImageDomain(
        float(pixel_max), _floats(body["mean"], "mean"), _floats(body["std"], "std")
    )
    return BlockKey(
        secret=secret,
        patch=_int(body, "patch"),
        channels=_int(body, "channels"),
        layout=str(body["layout"]),
        transform=str(body["transform"]),
        flip=_bool(body, "flip"),
        scramble=_bool(body, "scramble"),
        grid=grid,
        domain=domain,
    )
