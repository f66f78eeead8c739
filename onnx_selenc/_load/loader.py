"""The loader: files -> key -> unsealing -> patched model -> ONNX Runtime session.

Restored weights live only in memory, never written anywhere. Models with external
data stay on disk as they are (ONNX Runtime reads the unchanged encrypted weights
from there); restored tensors reach it through ``add_external_initializers``, which
replaces them before graph optimisation. ``SessionOptions.add_initializer`` is never
used: ONNX Runtime may ignore it silently (device or name change after fusion) and
run the encrypted weights.

:func:`load_session` (with its own session options) goes further, because handing
ONNX Runtime a serialised model costs more than building the session from a path
(serialising it, then copying the ``bytes`` into ONNX Runtime and parsing them
again): the file is read once, its large tensors are never parsed into protobuf
(``_onnx/stripped.read_stripped``), restored kernels are written into that buffer in place,
and every large main-graph weight, restored or not, is handed over as an in-memory
external initializer backed by it; ONNX Runtime gets only the small graph. The
model is checked against its level's tag (AES-GMAC over the bytes the manifest's
SHA-256 digest covers, FORMAT.md 1.3) while ONNX Runtime builds the session (a
``PatchGate`` gives the check the original rows of what was already restored), and
the session is dropped unless it matches; the restored weights only ever reach ONNX
Runtime in this process, and nothing in the model can make it write anything (unless
``ORT_LOAD_CONFIG_FROM_MODEL=1`` lets the model set session options: then the tag
is checked first).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from onnx_selenc._onnx.graph import split_key, subgraphs
from onnx_selenc._onnx.modelio import PROTO_LIMIT, external_files
from onnx_selenc._onnx.stripped import StrippedModel, read_stripped
from onnx_selenc._onnx.tensors import kernel_matrix, owning_graph, read_array, write_array
from onnx_selenc.exceptions import FormatError, InvalidBundle, KeyMismatch, UnsafeSessionOptions

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
# The location given to tensors whose values ONNX Runtime receives in memory. No such
# file exists (':' cannot even be in a Windows file name): were ONNX Runtime ever to
# read the location instead of using the value, it would fail, never run masked weights.
_IN_MEMORY = "onnx-selenc:in-memory"
_CONSTANT_DOMAINS = ("", "ai.onnx")
# The standard operators with graph attributes (see _may_hold_subgraphs).
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})
# Models with less than this in memory are checked before the session is built.
_INLINE_TAG_BYTES = 256 << 20
_TAG_MISMATCH = "the model was modified after encryption (its level tag does not match)"
# Smaller tensors go to ONNX Runtime inside the serialised model: per tensor, an
# in-memory initializer costs more than copying a few KiB.
_MEMORY_THRESHOLD = 1 << 16


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
    return restore_opened(_open(model_path, key, level, passphrase))


def restore_opened(
    opened: _Opened, payloads: list[list[_bundle.TensorPatch]] | None = None
) -> RestoredModel:
    """:func:`restore_model` after :func:`_open` (``encrypt``'s self-check opens bytes;
    it has opened the ``payloads`` already)."""
    model, base_dir = opened.stripped.model, opened.path.parent
    skeleton, sources = opened.digest_inputs()
    if not opened.matches(opened.model_tag(skeleton, sources, overlap=_reads_files(sources))):
        raise InvalidBundle(_TAG_MISMATCH)
    if payloads is None:
        payloads = opened.payloads()
    _bundle.strip(model)
    if opened.files and opened.inline:
        onnx.load_external_data_for_model(model, str(base_dir))
    external = _apply(model, payloads, base_dir, opened.stripped)
    # Large tensors were parsed without their bytes: put back those not rewritten.
    opened.stripped.restore_raw_data(
        skip=frozenset(id(t) for t in opened.stripped.tensors if t.HasField("raw_data"))
    )
    return RestoredModel(
        model,
        opened.target,
        opened.manifest.levels,
        opened.manifest.key_id,
        base_dir if opened.files and not opened.inline else None,
        external,
    )


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

    def payloads(self) -> list[list[_bundle.TensorPatch]]:
        """Open and decode the sealed originals of levels 1..target."""
        return [
            _bundle.decode_payload(
                _seal.open_sealed(
                    self.keys[m].material, self.blobs[m], _bundle.blob_aad(self.manifest.raw, m)
                )
            )
            for m in range(1, self.target + 1)
        ]


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

    # Authenticate the manifest (blob 0); the model is then checked against its tag.
    _seal.open_sealed(keys[0].material, blobs[0], _bundle.blob_aad(manifest.raw, 0))
    tensors = list(iter_tensors(stripped.model.graph))
    files = external_files(stripped.model, path.parent, tensors)
    # Small external data is loaded inline by restore_model (one serialised model for
    # ONNX Runtime); past that, ONNX Runtime reads the files itself, which keeps the
    # peak lower and is the only way past protobuf's 2 GB limit.
    inline = not files or sum(f.stat().st_size for f in files) < INLINE_EXTERNAL_LIMIT
    return _Opened(path, stripped, manifest, blobs, keys, target, files, inline, tensors)


def _group(
    payloads: Sequence[Sequence[_bundle.TensorPatch]],
) -> dict[str, list[_bundle.TensorPatch]]:
    by_key: dict[str, list[_bundle.TensorPatch]] = {}
    for patches in payloads:
        for p in patches:
            by_key.setdefault(p.key, []).append(p)
    return by_key


def _patched(
    model: onnx.ModelProto,
    payloads: Sequence[Sequence[_bundle.TensorPatch]],
    base_dir: Path,
    stripped: StrippedModel | None,
    gate: PatchGate | None = None,
) -> Iterator[tuple[tuple[str, ...], str, onnx.TensorProto, np.ndarray]]:
    """Each patched tensor with its restored values, checked to fit.

    The values are a fresh array, or, with a ``gate``, the stripped tensor's own bytes
    in the file buffer, restored in place (the gate keeps the digest right).
    """
    locate = _Locator(model)
    names: dict[np.dtype, str] = {}  # numpy's dtype.name is slow; hundreds of tensors
    for key, patches in _group(payloads).items():
        graph_path, name = split_key(key)
        tensor = locate(graph_path, name)
        values, owned = _values(tensor, base_dir, stripped)
        if values.dtype not in names:
            names[values.dtype] = values.dtype.name
        if names[values.dtype] != patches[0].dtype or tuple(values.shape) != patches[0].shape:
            raise InvalidBundle("sealed data does not fit the model's tensors")
        span = stripped.span(tensor) if gate is not None and stripped is not None else None
        in_place = span is not None and not owned and values.flags.writeable
        # A fresh array read from an external file is ours to patch: no second copy.
        restored = values if owned or in_place else np.array(values, copy=True)
        kernels = kernel_matrix(restored)
        indices = [p.kernels for p in patches if p.kernels.size]
        if indices:
            every = indices[0] if len(indices) == 1 else np.concatenate(indices)
            if every.min() < 0 or every.max() >= kernels.shape[0]:
                raise InvalidBundle("sealed data does not fit the model's tensors")
            if gate is not None and span is not None and in_place:
                gate.before_patch(span[0], kernels, every)
        for p in patches:
            kernels[p.kernels] = p.values
        yield graph_path, name, tensor, restored


def _values(
    tensor: onnx.TensorProto, base_dir: Path, stripped: StrippedModel | None
) -> tuple[np.ndarray, bool]:
    """A tensor's current values, and whether the array is a fresh one nobody else holds.

    A stripped tensor gives a read-only view of the file buffer; an external one an
    array read from its file; any other the model's own bytes (read-only).
    """
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return read_array(tensor, base_dir), True
    if stripped is not None:
        view = stripped.array(tensor)
        if view is not None:
            return view, False
        raw = stripped.raw(tensor)
        if raw is not None:  # an odd size or dtype: let onnx read it as usual
            tensor.raw_data = bytes(raw)
    return read_array(tensor, base_dir), False


def _apply(
    model: onnx.ModelProto,
    payloads: Sequence[Sequence[_bundle.TensorPatch]],
    base_dir: Path,
    stripped: StrippedModel | None = None,
) -> dict[str, np.ndarray]:
    """Write the sealed originals back; return values of tensors that stay external."""
    external: dict[str, np.ndarray] = {}
    for graph_path, name, tensor, restored in _patched(model, payloads, base_dir, stripped):
        if (
            tensor.data_location == onnx.TensorProto.EXTERNAL
            and not graph_path
            and any(i is tensor for i in model.graph.initializer)
        ):
            external[name] = restored
        else:
            write_array(tensor, restored)
    return external


class _Locator:
    """A patched tensor by ``(graph path, name)``, each graph indexed once.

    A scan per patched tensor is quadratic: PaddlePaddle exports hold hundreds of
    weights in Constant nodes. The index keeps :func:`_tensors.find_tensor`'s choice: the
    first initializer of that name, else the first Constant with a ``value`` that outputs
    it.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._graphs: dict[tuple[str, ...], tuple[dict[str, Any], dict[str, Any]] | None] = {}

    def __call__(self, graph_path: tuple[str, ...], name: str) -> onnx.TensorProto:
        if graph_path not in self._graphs:
            try:
                graph = owning_graph(self._model, graph_path)
            except FormatError:
                self._graphs[graph_path] = None
            else:
                initializers: dict[str, Any] = {}
                constants: dict[str, Any] = {}
                for t in graph.initializer:
                    initializers.setdefault(t.name, t)
                for node in graph.node:
                    if node.op_type == "Constant" and node.output:
                        for attr in node.attribute:
                            if attr.name == "value":
                                constants.setdefault(node.output[0], attr.t)
                                break
                self._graphs[graph_path] = (initializers, constants)
        found = self._graphs[graph_path]
        tensor = None
        if found is not None:
            tensor = found[0].get(name)
            if tensor is None:
                tensor = found[1].get(name)
        if tensor is None:
            raise InvalidBundle("sealed data does not fit the model's tensors")
        return tensor


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
    if sess_options is None:
        # In-memory initializers need options of our own: a caller's SessionOptions
        # would keep the restored weights alive (and apply them to its next session).
        return _load_in_memory(model_path, key, level, passphrase, chosen)
    restored = restore_model(model_path, key=key, level=level, passphrase=passphrase)
    return build_session(restored, providers=chosen, sess_options=sess_options)


def _load_in_memory(
    model_path: str | os.PathLike[str],
    key: KeySource,
    level: int | None,
    passphrase: str | None,
    providers: Sequence[str | tuple[str, Mapping[str, Any]]] | None,
) -> ort.InferenceSession:
    """:func:`load_session` with weights handed over in memory (see the module docstring)."""
    import onnxruntime as ort

    opened = _open(model_path, key, level, passphrase)
    model, base_dir = opened.stripped.model, opened.path.parent
    skeleton, sources = opened.digest_inputs(in_place=True)
    gate = PatchGate()
    check = _TagCheck(opened, skeleton, sources, gate)
    if os.environ.get("ORT_LOAD_CONFIG_FROM_MODEL") == "1":
        check.verify()  # the model could set session options: trust it first
    elif check.worth_a_thread():
        check.start()
    else:
        check.verify()  # cheap: no tampered model ever reaches ONNX Runtime
    try:
        payloads = opened.payloads()
        _bundle.strip(model)
        names, values = _hand_over(model, payloads, base_dir, opened.stripped, gate)
        options = ort.SessionOptions()
        if opened.files:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(base_dir)
            )
        # ONNX Runtime copies these while it builds the session: keep them alive till then.
        keep_alive = [ort.OrtValue.ortvalue_from_numpy(v) for v in values]
        if names:
            options.add_external_initializers(names, keep_alive)
        serialised = model.SerializeToString()
        chosen = list(providers) if providers is not None else default_providers()
        try:
            session = ort.InferenceSession(serialised, options, providers=chosen)
            del keep_alive, values, options
        except Exception as exc:
            if not names or not type(exc).__module__.startswith("onnxruntime"):
                raise
            # An onnxruntime that takes in-memory initializers differently: build it the
            # ordinary way (one serialised model), after the check.
            check.verify()
            restored = restore_model(opened.path, key=opened.keys[-1], level=opened.target)
            return build_session(restored, providers=providers)
    except BaseException:
        check.verify()  # a modified model is reported as that, before anything else
        raise
    check.verify()
    return session


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


def _reads_files(sources: Sequence[Any]) -> bool:
    """Whether checking these sources reads external data files: only then does a
    reader thread pay off (GMAC over bytes already in memory outruns the hand-off)."""
    return any(isinstance(s, ExternalData | onnx.TensorProto) for s in sources)


def _hand_over(
    model: onnx.ModelProto,
    payloads: Sequence[Sequence[_bundle.TensorPatch]],
    base_dir: Path,
    stripped: StrippedModel,
    gate: PatchGate | None = None,
) -> tuple[list[str], list[np.ndarray]]:
    """Prepare the model for ONNX Runtime; return the initializers it gets in memory.

    Restored tensors and large unchanged ones (read-only views of the file buffer) go
    in memory when ONNX Runtime can take them that way: main-graph initializers and
    Constant values that some node reads. The rest is written into the model.
    """
    handed: dict[int, tuple[onnx.TensorProto, str]] | None = None
    names: list[str] = []
    values: list[np.ndarray] = []

    def in_memory(tensor: onnx.TensorProto, value: np.ndarray) -> bool:
        nonlocal handed
        if value.nbytes < _MEMORY_THRESHOLD:
            return False
        if handed is None:
            handed = _memory_candidates(model)
        entry = handed.get(id(tensor))
        if entry is None:
            return False
        name = entry[1]
        del tensor.external_data[:]
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", _IN_MEMORY), ("offset", "0"), ("length", str(value.nbytes))):
            tensor.external_data.add(key=k, value=v)
        names.append(name)
        values.append(value)
        return True

    for _, _, tensor, restored in _patched(model, payloads, base_dir, stripped, gate):
        if not in_memory(tensor, restored):
            write_array(tensor, restored)
    for tensor in stripped.tensors:
        if tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue  # restored above, or read by ONNX Runtime from its external file
        view = stripped.array(tensor)
        if view is None or not in_memory(tensor, view):
            raw = stripped.raw(tensor)
            assert raw is not None
            tensor.raw_data = bytes(raw)
    return names, values


def _memory_candidates(model: onnx.ModelProto) -> dict[int, tuple[onnx.TensorProto, str]]:
    """Each main-graph tensor ONNX Runtime accepts as an in-memory initializer, by ``id()``.

    That is an initializer, or the value of a Constant node (ONNX Runtime turns those
    into initializers), that some node reads: an unused one is dropped before the
    replacement and would be an error. A name given twice is left alone.
    """
    graph = model.graph
    # One pass over the nodes (this runs on every load; Paddle exports hold hundreds).
    read: set[str] = set()
    candidates: list[tuple[onnx.TensorProto, str]] = [(t, t.name) for t in graph.initializer]
    for node in graph.node:
        read.update(node.input)
        if node.op_type == "Constant" and node.domain in _CONSTANT_DOMAINS and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    candidates.append((attr.t, node.output[0]))
        elif _may_hold_subgraphs(node):
            for _, sub in subgraphs(node):
                _inputs_read(sub, read)
    seen: dict[str, int] = {}
    for _, name in candidates:
        seen[name] = seen.get(name, 0) + 1
    # The values hold the tensors, which keeps their ids unique while the dict lives.
    return {
        id(tensor): (tensor, name)
        for tensor, name in candidates
        if name and name in read and seen[name] == 1
    }


def _inputs_read(graph: onnx.GraphProto, names: set[str] | None = None) -> set[str]:
    """Every value name a node of the graph or of its subgraphs reads."""
    names = set() if names is None else names
    for node in graph.node:
        names.update(node.input)
        if _may_hold_subgraphs(node):
            for _, sub in subgraphs(node):
                _inputs_read(sub, names)
    return names


def _may_hold_subgraphs(node: onnx.NodeProto) -> bool:
    """Cheaper than :func:`subgraphs` on every node: of the standard operators only
    If, Loop, Scan and SequenceMap have graph attributes (the checker refuses others)."""
    return bool(node.attribute) and (
        node.domain not in _CONSTANT_DOMAINS or node.op_type in _SUBGRAPH_OPS
    )


def open_bytes(data: bytes, key: LevelKey, level: int) -> _Opened:
    """Open an encrypted model held in memory (no external data) as the loader would a file."""
    return _open(Path("in-memory.onnx"), key, level, None, data)
