"""The loader: files -> key -> unsealing -> patched model -> ONNX Runtime session.

Restored weights live only in memory: the patched ModelProto is handed to ONNX
Runtime as bytes, never written anywhere. Models with external data stay on disk
as they are (ONNX Runtime reads the unchanged encrypted weights from there); the
restored tensors reach it through ``add_external_initializers``, which replaces
them before graph optimisation. ``SessionOptions.add_initializer`` is never used:
ONNX Runtime may ignore it silently (device or name change after fusion) and run
the encrypted weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from . import _bundle, _seal
from ._digest import model_digest
from ._keys import LevelKey, parse_key_file, read_key_file
from ._masking import kernel_matrix
from ._modelio import PROTO_LIMIT, external_files, load_model
from ._tensors import find_tensor, read_array, write_array
from .exceptions import FormatError, InvalidBundle, KeyMismatch, UnsafeSessionOptions

if TYPE_CHECKING:
    import onnxruntime as ort

KeySource = str | os.PathLike[str] | LevelKey
INLINE_EXTERNAL_LIMIT = min(PROTO_LIMIT, 256 * 2**20)
_DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# Provider options that make an execution provider write compiled weights to disk.
_DISK_CACHE_OPTIONS = (
    "trt_engine_cache_enable",
    "trt_dump_ep_context_model",
    "cache_dir",
    "ep_context_enable",
    "trt_ep_context_file_path",
)


@dataclass(frozen=True)
class RestoredModel:
    """A model restored to one level, in memory.

    Attributes:
        model: the patched model (bundle removed); tensors restored in place.
        level: the level restored.
        levels: the model's number of levels.
        key_id: the key chain's public id.
        base_dir: folder for external data still on disk, or ``None``.
        external_initializers: restored values of main-graph tensors whose data
            stays external; they replace the file's (encrypted) values at session build.
    """

    model: onnx.ModelProto
    level: int
    levels: int
    key_id: str
    base_dir: Path | None
    external_initializers: Mapping[str, np.ndarray] = field(default_factory=dict)


def open_key(key: KeySource, *, passphrase: str | None = None) -> LevelKey:
    """Accept a key file path, key-file bytes, or a :class:`LevelKey`."""
    if isinstance(key, LevelKey):
        return key
    if isinstance(key, bytes | bytearray):
        return parse_key_file(bytes(key), passphrase=passphrase)
    if isinstance(key, str | os.PathLike):
        return read_key_file(key, passphrase=passphrase)
    raise TypeError(f"key must be a key-file path or a LevelKey, not {type(key).__name__}")


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """A model file, or a packaged folder holding ``onnx/model.enc.onnx``."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "onnx" / "model.enc.onnx", p / "model.enc.onnx"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{p} is a folder without onnx/model.enc.onnx")
    return p


def restore_model(
    model_path: str | os.PathLike[str],
    *,
    key: KeySource,
    level: int | None = None,
    passphrase: str | None = None,
) -> RestoredModel:
    """Restore an encrypted model to a level, in memory.

    Args:
        model_path: the encrypted ``.onnx`` (or a packaged folder).
        key: key file path or :class:`LevelKey` (no default: the caller supplies it).
        level: level to restore; default: the key's own level.
        passphrase: for a passphrase-protected key file.

    Returns:
        The restored model; at the top level its weights equal the original's bit for bit.

    Raises:
        NotEncrypted: the model carries no onnx-selenc bundle.
        KeyMismatch: the key belongs to another encrypted model.
        LevelNotGranted: ``level`` is above the key's level.
        InvalidBundle: the model, its sealed data or the key failed authentication.
        FormatError, KeyFileError: malformed or truncated files.
    """
    path = resolve_model_path(model_path)
    level_key = open_key(key, passphrase=passphrase)
    model = load_model(path, load_external=False)
    manifest, blobs = _bundle.read_bundle(model)
    if level_key.key_id != manifest.key_id:
        raise KeyMismatch(
            f"this key (id {level_key.key_id}) belongs to another model; "
            f"this model needs a key with id {manifest.key_id}"
        )
    if level_key.levels != manifest.levels:
        raise KeyMismatch("the key's level count does not match the model's")
    target = level_key.level if level is None else int(level)
    if not 0 <= target <= manifest.levels:
        raise ValueError(f"level must be between 0 and {manifest.levels}, got {target}")
    keys = [level_key.derive(m) for m in range(target + 1)]  # raises LevelNotGranted

    # Authenticate the manifest (blob 0), then check the model against its digest.
    _seal.open_sealed(keys[0].material, blobs[0], _bundle.blob_aad(manifest.raw, 0))
    files = external_files(model, path.parent)
    # Small external data is loaded inline (one serialised model for ONNX Runtime);
    # past that, ONNX Runtime reads the files itself, which keeps the peak lower and
    # is the only way past protobuf's 2 GB limit.
    inline = not files or sum(f.stat().st_size for f in files) < INLINE_EXTERNAL_LIMIT
    if (
        model_digest(model, path.parent, exclude_metadata=_bundle.BUNDLE_KEYS)
        != manifest.model_digest
    ):
        raise InvalidBundle("the model was modified after encryption (digest mismatch)")

    payloads = [
        _bundle.decode_payload(
            _seal.open_sealed(keys[m].material, blobs[m], _bundle.blob_aad(manifest.raw, m))
        )
        for m in range(1, target + 1)
    ]
    _bundle.strip(model)
    if files and inline:
        onnx.load_external_data_for_model(model, str(path.parent))
    external = _apply(model, payloads, path.parent)
    return RestoredModel(
        model,
        target,
        manifest.levels,
        manifest.key_id,
        path.parent if files and not inline else None,
        external,
    )


def _apply(
    model: onnx.ModelProto, payloads: Sequence[Sequence[_bundle.TensorPatch]], base_dir: Path
) -> dict[str, np.ndarray]:
    """Write the sealed originals back; return values of tensors that stay external."""
    by_key: dict[str, list[_bundle.TensorPatch]] = {}
    for patches in payloads:
        for p in patches:
            by_key.setdefault(p.key, []).append(p)
    external: dict[str, np.ndarray] = {}
    for key, patches in by_key.items():
        graph_path, name = tuple(key.split("/")[:-1]), key.split("/")[-1]
        tensor = _locate(model, graph_path, name)
        values = read_array(tensor, base_dir)
        if values.dtype.name != patches[0].dtype or tuple(values.shape) != patches[0].shape:
            raise InvalidBundle("sealed data does not fit the model's tensors")
        restored = np.array(values, copy=True)
        kernels = kernel_matrix(restored)
        for p in patches:
            if p.kernels.size and (p.kernels.min() < 0 or p.kernels.max() >= kernels.shape[0]):
                raise InvalidBundle("sealed data does not fit the model's tensors")
            kernels[p.kernels] = p.values
        if (
            tensor.data_location == onnx.TensorProto.EXTERNAL
            and not graph_path
            and any(i is tensor for i in model.graph.initializer)
        ):
            external[name] = restored
        else:
            write_array(tensor, restored)
    return external


def _locate(model: onnx.ModelProto, graph_path: tuple[str, ...], name: str) -> onnx.TensorProto:
    try:
        return find_tensor(model, graph_path, "initializer", name)
    except FormatError:
        try:
            return find_tensor(model, graph_path, "constant", name)
        except FormatError:
            raise InvalidBundle("sealed data does not fit the model's tensors") from None


def check_session_options(
    sess_options: ort.SessionOptions | None, provider_options: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Refuse options that would write restored weights to disk.

    Raises:
        UnsafeSessionOptions: an optimised-model path, EP-context dumps, or engine caches.
    """
    if sess_options is not None:
        if sess_options.optimized_model_filepath:
            raise UnsafeSessionOptions(
                "SessionOptions.optimized_model_filepath would write the restored (plaintext) "
                "weights to disk; unset it"
            )
        if _config_entry(sess_options, "ep.context_enable") not in ("", "0"):
            raise UnsafeSessionOptions(
                "session config 'ep.context_enable' would dump the restored model to disk"
            )
    for opts in provider_options:
        for name in _DISK_CACHE_OPTIONS:
            value = str(opts.get(name, "")).strip().lower()
            if value not in ("", "0", "false"):
                raise UnsafeSessionOptions(
                    f"provider option '{name}' would write compiled restored weights to disk"
                )


def _config_entry(sess_options: ort.SessionOptions, entry: str) -> str:
    try:
        return str(sess_options.get_session_config_entry(entry))
    except Exception:  # onnxruntime raises when the entry was never set
        return ""


def default_providers() -> list[str]:
    """CUDA where the installed onnxruntime offers it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in _DEFAULT_PROVIDERS if p in available]


def build_session(
    restored: RestoredModel,
    *,
    providers: Sequence[str | tuple[str, Mapping[str, Any]]] | None = None,
    sess_options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """Build an ONNX Runtime session from a restored model, entirely in memory."""
    import onnxruntime as ort

    chosen = list(providers) if providers is not None else default_providers()
    check_session_options(sess_options, [p[1] for p in chosen if isinstance(p, tuple)])
    options = sess_options if sess_options is not None else ort.SessionOptions()
    keep_alive = []
    if restored.base_dir is not None:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(restored.base_dir)
        )
    if restored.external_initializers:
        names = list(restored.external_initializers)
        keep_alive = [
            ort.OrtValue.ortvalue_from_numpy(restored.external_initializers[n]) for n in names
        ]
        options.add_external_initializers(names, keep_alive)
    session = ort.InferenceSession(restored.model.SerializeToString(), options, providers=chosen)
    del keep_alive
    return session


def load_session(
    model_path: str | os.PathLike[str],
    *,
    key: KeySource,
    level: int | None = None,
    passphrase: str | None = None,
    providers: Sequence[str | tuple[str, Mapping[str, Any]]] | None = None,
    sess_options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """Restore an encrypted model to the key's level and return an ONNX Runtime session.

    Plaintext weights never touch disk. Which providers actually run is what
    ``session.get_providers()`` reports (a provider that fails to load only warns).

    Args:
        model_path: the encrypted ``.onnx`` (or a packaged folder).
        key: key file path or :class:`LevelKey`; there is no default key source.
        level: restore this level (at most the key's); default the key's level.
        passphrase: for a passphrase-protected key file.
        providers: ONNX Runtime providers; default CUDA (where available) then CPU.
        sess_options: session options; options that write the model to disk are refused.

    Returns:
        An ``onnxruntime.InferenceSession``.

    Raises:
        KeyMismatch, LevelNotGranted, InvalidBundle, NotEncrypted, FormatError,
        KeyFileError: see :func:`restore_model`.
        UnsafeSessionOptions: options that would write restored weights to disk.

    Example:
        >>> sess = load_session("model.enc.onnx", key="tier2.key")  # doctest: +SKIP
        >>> sess.get_providers()  # doctest: +SKIP
        ['CPUExecutionProvider']
    """
    chosen = list(providers) if providers is not None else None
    # Check the options before any decryption happens.
    check_session_options(sess_options, [p[1] for p in chosen or [] if isinstance(p, tuple)])
    restored = restore_model(model_path, key=key, level=level, passphrase=passphrase)
    return build_session(restored, providers=chosen, sess_options=sess_options)
