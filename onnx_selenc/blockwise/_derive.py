"""Keyed, deterministic derivation of the per-block transforms.

Every secret-dependent quantity is derived from the 32-byte key through HKDF-SHA256
with a domain-separated label, then expanded with a ChaCha20 keystream. Nothing
depends on numpy's random generators (whose method streams may change between
numpy releases), so a key file gives the same transform on every machine.

Block convention: the pixels of one ``P x P`` block over ``C`` channels are
flattened as ``k = (dy * P + dx) * C + c`` (row-major, channel last), giving a
vector ``b`` of length ``L = P * P * C``. A block transform maps ``b`` to
``b' = G (D b + f)`` where ``D`` is a diagonal of +-1 (the keyed negative-positive
flip), ``f = pixel_max`` on the flipped positions and 0 elsewhere (so a flipped
value ``x`` becomes ``pixel_max - x``), and ``G`` is either a keyed permutation
(``b'[k] = b[perm[k]]``) or a keyed orthogonal matrix ``Q``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_LABEL = b"onnx-selenc/blockwise/v1/"


def subkey(secret: bytes, purpose: str) -> bytes:
    """Derive a 32-byte subkey for ``purpose`` from the secret with HKDF-SHA256.

    Args:
        secret: The 32-byte block-wise key.
        purpose: Domain-separation label (ASCII).

    Returns:
        32 pseudorandom bytes, independent for every distinct ``purpose``.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + purpose.encode())
    return hkdf.derive(secret)


def keystream(secret: bytes, purpose: str, nbytes: int) -> bytes:
    """Return ``nbytes`` of ChaCha20 keystream under the subkey for ``purpose``."""
    cipher = Cipher(algorithms.ChaCha20(subkey(secret, purpose), b"\0" * 16), mode=None)
    return cipher.encryptor().update(b"\0" * nbytes)


def _words(secret: bytes, purpose: str, count: int) -> np.ndarray:
    return np.frombuffer(keystream(secret, purpose, 8 * count), dtype="<u8")


def keyed_permutation(secret: bytes, purpose: str, n: int) -> np.ndarray:
    """Return a uniformly random permutation of ``range(n)`` selected by the key.

    The permutation is the argsort of ``n`` keyed 64-bit words (a keyed shuffle);
    the rare draw with a repeated word (probability about ``n**2 / 2**65``) is
    redrawn so the result stays exactly uniform.

    Raises:
        RuntimeError: If eight consecutive draws collide (never happens in practice).
    """
    for attempt in range(8):
        words = _words(secret, f"{purpose}/draw{attempt}", n)
        if np.unique(words).size == n:
            return np.argsort(words, kind="stable").astype(np.int64)
    raise RuntimeError("keyed permutation: repeated collisions (keystream failure?)")


def keyed_bits(secret: bytes, purpose: str, n: int) -> np.ndarray:
    """Return ``n`` keyed fair coin flips as a boolean array."""
    return (np.frombuffer(keystream(secret, purpose, n), dtype=np.uint8) & 1).astype(bool)


def keyed_orthogonal(secret: bytes, purpose: str, n: int) -> np.ndarray:
    """Return a Haar-random ``n x n`` orthogonal matrix selected by the key.

    Gaussian entries come from Box-Muller on keyed 53-bit uniforms; the matrix is the
    Q factor of their QR decomposition with the signs fixed by ``sign(diag(R))``,
    which makes it unique (independent of the LAPACK sign convention).
    """
    words = _words(secret, purpose, 2 * n * n)
    uniform = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    u1, u2 = uniform[: n * n], uniform[n * n :]
    gauss = (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).reshape(n, n)
    q, r = np.linalg.qr(gauss)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return q * signs[np.newaxis, :]


@dataclass(frozen=True, eq=False)
class BlockTransform:
    """A concrete keyed block transform ``b' = G (D b + f)`` plus optional block scrambling.

    Attributes:
        patch: Block size ``P``.
        channels: Channels ``C``.
        perm: Pixel/channel permutation (``b'[k] = b[perm[k]]``) or None when orthogonal.
        ortho: Orthogonal matrix ``Q`` (``b' = Q b``) or None when a permutation.
        flip: Boolean mask of flipped positions (all False without flip).
        pixel_max: White level of the image domain (flip maps ``x`` to ``pixel_max - x``).
        block_perm: Block scrambling (encrypted block ``j`` is plain block ``block_perm[j]``)
            or None.
    """

    patch: int
    channels: int
    perm: np.ndarray | None
    ortho: np.ndarray | None
    flip: np.ndarray
    pixel_max: float
    block_perm: np.ndarray | None

    @property
    def length(self) -> int:
        """Block vector length ``L = P * P * C``."""
        return self.patch * self.patch * self.channels

    @property
    def is_identity(self) -> bool:
        """True when the transform leaves every image unchanged (a key that encrypts nothing)."""
        if self.flip.any():
            return False
        if self.block_perm is not None and not _is_arange(self.block_perm):
            return False
        if self.ortho is not None:
            return bool(np.allclose(self.ortho, np.eye(self.length)))
        assert self.perm is not None
        return _is_arange(self.perm)

    def mixing(self) -> np.ndarray:
        """Return ``G`` as a dense ``L x L`` float64 matrix."""
        if self.ortho is not None:
            return self.ortho
        assert self.perm is not None
        g = np.zeros((self.length, self.length))
        g[np.arange(self.length), self.perm] = 1.0
        return g

    def linear(self) -> np.ndarray:
        """Return ``M = G D``, the linear part of the block map ``b' = M b + c``."""
        return self.mixing() * np.where(self.flip, -1.0, 1.0)[np.newaxis, :]

    def offset(self) -> np.ndarray:
        """Return ``c = G f``, the constant part of the block map ``b' = M b + c``."""
        return self.mixing() @ (self.flip * float(self.pixel_max))

    def forward(self, blocks: np.ndarray) -> np.ndarray:
        """Apply the block map to float blocks of shape ``[..., L]``."""
        x = np.where(self.flip, self.pixel_max - blocks, blocks)
        return x @ self.ortho.T if self.ortho is not None else x[..., self.perm]

    def inverse(self, blocks: np.ndarray) -> np.ndarray:
        """Invert :meth:`forward` on float blocks of shape ``[..., L]``."""
        if self.ortho is not None:
            x = blocks @ self.ortho
        else:
            x = np.empty_like(blocks)
            x[..., self.perm] = blocks
        return np.where(self.flip, self.pixel_max - x, x)


def _is_arange(perm: np.ndarray) -> bool:
    return bool(np.array_equal(perm, np.arange(perm.size)))


def log2_factorial(n: int) -> float:
    """Return ``log2(n!)``."""
    return math.lgamma(n + 1) / math.log(2)


@lru_cache(maxsize=16)
def derive_transform(
    secret: bytes,
    patch: int,
    channels: int,
    orthogonal: bool,
    flip: bool,
    grid: tuple[int, int] | None,
    pixel_max: float,
) -> BlockTransform:
    """Derive the :class:`BlockTransform` of a key (cached: QR of large blocks takes time).

    Args:
        secret: The 32-byte key.
        patch: Block size ``P``.
        channels: Channels ``C``.
        orthogonal: Orthogonal mixing instead of a permutation.
        flip: Include the keyed negative-positive flip.
        grid: ``(rows, cols)`` of blocks to scramble, or None for no scrambling.
        pixel_max: White level of the image domain.

    Returns:
        The transform (its arrays are read-only).
    """
    shape = f"P{patch}C{channels}"
    n = patch * patch * channels
    perm = None if orthogonal else keyed_permutation(secret, f"perm/{shape}", n)
    ortho = keyed_orthogonal(secret, f"orthogonal/{shape}", n) if orthogonal else None
    mask = keyed_bits(secret, f"flip/{shape}", n) if flip else np.zeros(n, dtype=bool)
    block_perm = None
    if grid is not None:
        block_perm = keyed_permutation(secret, f"scramble/{grid[0]}x{grid[1]}", grid[0] * grid[1])
    for arr in (perm, ortho, mask, block_perm):
        if arr is not None:
            arr.setflags(write=False)
    return BlockTransform(patch, channels, perm, ortho, mask, float(pixel_max), block_perm)
