"""Opening an encrypted model: the key checked, the manifest authenticated, the model's
level tag (computed at once, or on a worker while ONNX Runtime builds the session)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import onnx

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto import seal as _seal
from onnx_selenc._crypto.digest import (
    ExternalData,
    PatchGate,
    Region,
    hash_model,
    iter_tensors,
    prepare_digest,
)
from onnx_selenc._crypto.keys import LevelKey, parse_key_file, read_key_file
from onnx_selenc._crypto.owner import check_owner
from onnx_selenc._load.external import read_external
from onnx_selenc._onnx.modelio import PROTO_LIMIT, external_files
from onnx_selenc._onnx.stripped import StrippedModel, read_stripped
from onnx_selenc.exceptions import InvalidArgument, InvalidBundle, KeyMismatch, LevelNotGranted

if TYPE_CHECKING:
    pass


KeySource = str | os.PathLike[str] | LevelKey


INLINE_EXTERNAL_LIMIT = min(PROTO_LIMIT, 256 * 2**20)


_TAG_MISMATCH = "the model was modified after encryption (its level tag does not match)"


# Models with less than this in memory are checked before the session is built.
_INLINE_TAG_BYTES = 256 << 20


@dataclass(frozen=True)
class RestoredModel:
    """A model restored to one level, in memory.

    The model never refers to a file: external data was read once, into memory, and
    authenticated there. Below ``INLINE_EXTERNAL_LIMIT`` of it, the model holds every
    tensor's bytes; past that (and always past protobuf's 2 GB), its main-graph weights
    that were external are marked as in memory (a location that names no file) and
    their values are in the two mappings, which :func:`build_session` hands over.

    Attributes:
        model: the patched model (bundle removed); tensors restored in place.
        level: the level restored.
        levels: the model's number of levels.
        key_id: the key chain's public id.
        base_dir: the model's folder when its weights are in the mappings (ONNX
            Runtime reads nothing there), else ``None``.
        external_initializers: restored values of main-graph tensors whose data was
            external.
        unchanged_initializers: values, as read and authenticated, of the other
            main-graph tensors whose data was external (views of the loader's buffer).
    """

    model: onnx.ModelProto
    level: int
    levels: int
    key_id: str
    base_dir: Path | None
    external_initializers: Mapping[str, np.ndarray] = field(default_factory=dict)
    unchanged_initializers: Mapping[str, np.ndarray] = field(default_factory=dict)


def open_key(key: KeySource, *, passphrase: str | None = None) -> LevelKey:
    """Accept a key file path, key-file bytes, or a :class:`LevelKey`."""
    if isinstance(key, LevelKey):
        return key
    if isinstance(key, bytes | bytearray):
        return parse_key_file(bytes(key), passphrase=passphrase)
    if isinstance(key, str | os.PathLike):
        return read_key_file(key, passphrase=passphrase)
    raise TypeError(f"key must be a key-file path or a LevelKey, not {type(key).__name__}")


# Where a packaged folder holds its model: the Hugging Face name first, then the name
# older packages used (onnx/model.enc.onnx), then either at the folder's top.
_PACKAGED_MODEL = ("onnx/model.onnx", "onnx/model.enc.onnx", "model.onnx", "model.enc.onnx")


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """A model file, or a packaged folder's model (``onnx/model.onnx``, older packages'
    ``onnx/model.enc.onnx``).

    Raises:
        FileNotFoundError: a folder holding none of those names.
    """
    p = Path(path)
    if p.is_dir():
        for name in _PACKAGED_MODEL:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(
            f"{p} is a folder without a packaged model (looked for {', '.join(_PACKAGED_MODEL)})"
        )
    return p


@dataclass
class _Opened:
    """An encrypted model read and parsed, its key checked and its manifest authenticated."""

    path: Path
    stripped: StrippedModel
    manifest: _bundle.Manifest
    blobs: list[bytes]
    keys: list[LevelKey]
    target: int
    files: list[Path]
    inline: bool
    tensors: list[onnx.TensorProto]  # iter_tensors of the model, listed once
    external: frozenset[int] = frozenset()  # ids of the tensors read_external took in

    def read_external(self) -> None:
        """Read the external data once into the model's buffer (a no-op the second time).

        Every later step (tag check, restore, hand-over) uses that buffer only; without
        this call the tag check reads the files itself (what the encryptor's check of
        its staged files wants: no copy of gigabytes it will not use).

        Raises:
            FormatError: external data missing, out of range or truncated.
        """
        if self.files and not self.external:
            taken = read_external(self.stripped, self.path.parent, self.tensors)
            self.external = frozenset(id(t) for t in taken)

    def digest_inputs(self, *, in_place: bool = False) -> tuple[bytes, list[Any]]:
        """Skeleton and tensor sources of the digest (they no longer depend on the model).

        With ``in_place`` the stripped tensors are ``Region`` sources, which a
        :class:`PatchGate` lets the loader patch while they are being hashed.
        """
        return prepare_digest(
            self.stripped.model,
            self.path.parent,
            exclude_metadata=_bundle.BUNDLE_KEYS,
            raw_of=self.stripped.region if in_place else self.stripped.raw,
            tensors=self.tensors,
        )

    def model_tag(
        self,
        skeleton: bytes,
        sources: list[Any],
        *,
        overlap: bool,
        gate: PatchGate | None = None,
    ) -> str:
        """The model's tag at the target level, recomputed with that level's key.

        The tag (AES-GMAC, see ``_seal.ModelTagger``) covers the same bytes as the
        manifest's SHA-256 digest at a tenth of the cost.
        """
        m = self.target
        tagger = _seal.model_tagger_for(self.keys[m].material, self.manifest.model_tags[m])
        hash_model(
            skeleton,
            sources,
            self.path.parent,
            overlap=overlap,
            gate=gate,
            taggers=[tagger],
            sha256=False,
        )
        return tagger.result()

    def matches(self, tag: str) -> bool:
        """The recomputed tag equals the manifest's (constant-time comparison)."""
        return hmac.compare_digest(tag, self.manifest.model_tags[self.target])

    def payloads(self, buffers: list[bytearray] | None = None) -> list[list[_bundle.TensorPatch]]:
        """Open and decode the sealed originals of levels 1..target (see
        :func:`unseal_levels` for ``buffers``)."""
        return unseal_levels(self.manifest, self.blobs, self.keys[: self.target + 1], buffers)


def unseal_levels(
    manifest: _bundle.Manifest,
    blobs: Sequence[bytes],
    keys: Sequence[LevelKey],
    buffers: list[bytearray] | None = None,
) -> list[list[_bundle.TensorPatch]]:
    """The decoded originals of levels 1..len(keys)-1 (``keys[m]``: the level-m key).

    The patches are views of the decrypted bytes; ``buffers`` receives those, for a
    caller that zeroes them once the originals have been handed on.
    """
    patches = []
    for m in range(1, len(keys)):
        plain = _seal.open_sealed_into(
            keys[m].material, blobs[m], _bundle.blob_aad(manifest.raw, m)
        )
        if buffers is not None:
            buffers.append(plain)
        # decode_payload only slices it and makes views (writable ones: zeroable).
        patches.append(_bundle.decode_payload(cast(bytes, plain)))
    return patches


def _open(
    model_path: str | os.PathLike[str],
    key: KeySource,
    level: int | None,
    passphrase: str | None,
    data: bytes | None = None,
) -> _Opened:
    """Everything :func:`restore_model` does before the model check, in the same order.

    With ``data`` the model is those bytes, not the file (the path names its folder).
    """
    path = resolve_model_path(model_path) if data is None else Path(model_path)
    level_key = open_key(key, passphrase=passphrase)
    stripped = read_stripped(path, data)
    manifest, blobs = _bundle.read_bundle(stripped.model)
    check_owner(manifest, level_key)  # before anything in the manifest is believed
    if level_key.key_id != manifest.key_id:
        raise KeyMismatch(
            f"this key (id {level_key.key_id}) belongs to another model; "
            f"this model needs a key with id {manifest.key_id}"
        )
    if level_key.levels != manifest.levels:
        raise KeyMismatch("the key's level count does not match the model's")
    target = level_key.level if level is None else int(level)
    if not 0 <= target <= manifest.levels:
        raise InvalidArgument(f"level must be between 0 and {manifest.levels}, got {target}")
    if target > level_key.level:
        # Checked here: deriving levels 0..target would fail at level key+1 and name that.
        raise LevelNotGranted(
            f"level {target} was asked for, but this key grants level {level_key.level} "
            f"of {manifest.levels}; use a key of tier {target} or higher, or ask for "
            f"level {level_key.level} or lower"
        )
    keys = [level_key.derive(m) for m in range(target + 1)]

    # Authenticate the manifest (blob 0); the model is then checked against its tag.
    _seal.open_sealed(keys[0].material, blobs[0], _bundle.blob_aad(manifest.raw, 0))
    tensors = list(iter_tensors(stripped.model.graph))
    files = external_files(stripped.model, path.parent, tensors)
    # Small external data goes into restore_model's model (one serialised model for
    # ONNX Runtime); past that, its main-graph weights go to ONNX Runtime as in-memory
    # initializers, the only way past protobuf's 2 GB limit.
    inline = not files or sum(f.stat().st_size for f in files) < INLINE_EXTERNAL_LIMIT
    return _Opened(path, stripped, manifest, blobs, keys, target, files, inline, tensors)


def open_bytes(data: bytes, key: LevelKey, level: int) -> _Opened:
    """Open an encrypted model held in memory (no external data) as the loader would a file."""
    return _open(Path("in-memory.onnx"), key, level, None, data)


def _reads_files(sources: Sequence[Any]) -> bool:
    """Whether checking these sources reads external data files: only then does a
    reader thread pay off (GMAC over bytes already in memory outruns the hand-off)."""
    return any(isinstance(s, ExternalData | onnx.TensorProto) for s in sources)


class _TagCheck:
    """The model's tag, computed on a worker thread while the session is being built."""

    def __init__(
        self, opened: _Opened, skeleton: bytes, sources: list[Any], gate: PatchGate
    ) -> None:
        self._opened = opened
        self._args = (skeleton, sources)
        self._gate = gate
        self._future: Future[str] | None = None
        self._result: str | None = None

    def worth_a_thread(self) -> bool:
        """Whether checking while ONNX Runtime builds the session pays off.

        GMAC over bytes in memory costs about 1 ms per 20 MB, less than starting a
        thread and sharing the GIL with the session build on small models; reading
        external data files, or gigabytes, is worth overlapping.
        """
        sources = self._args[1]
        in_memory = sum(s.stop - s.start for s in sources if isinstance(s, Region))
        return self._reads_files() or in_memory > _INLINE_TAG_BYTES

    def _reads_files(self) -> bool:
        return _reads_files(self._args[1])

    def start(self) -> None:
        pool = ThreadPoolExecutor(1, "selenc-tag")
        self._future = pool.submit(
            self._opened.model_tag, *self._args, overlap=self._reads_files(), gate=self._gate
        )
        pool.shutdown(wait=False)  # the thread ends with the one task

    def verify(self) -> None:
        """Raise :class:`InvalidBundle` unless the model matches its tag.

        Also raises what hashing raised (external data missing or truncated).
        """
        if self._result is None:
            if self._future is None:
                self._result = self._opened.model_tag(
                    *self._args, overlap=self._reads_files(), gate=self._gate
                )
            else:
                self._result = self._future.result()
        if not self._opened.matches(self._result):
            raise InvalidBundle(_TAG_MISMATCH) from None
