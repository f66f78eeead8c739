"""The loader: files -> key -> unsealing -> patched model -> ONNX Runtime session.

Restored weights live only in memory, never written anywhere. External data is read
once into the loader's own buffer (``_load/external``), checked against the level tag
there, and ONNX Runtime gets only that buffer's bytes: the model it receives names no
data file. Large weights reach it through ``add_external_initializers``, which
replaces them before graph optimisation. ``SessionOptions.add_initializer`` is never
used: ONNX Runtime may ignore it silently (device or name change after fusion) and
run the encrypted weights.

:func:`load_session` reads each file once, never parses its large tensors into
protobuf, restores kernels in that buffer and hands every large weight over in memory;
the level tag is checked while ONNX Runtime builds the session where that pays off,
and the session is dropped unless it matches (docs/DESIGN.md, "Digest and loader",
says why and what it saves).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto.digest import (
    PatchGate,
)
from onnx_selenc._onnx.stripped import StrippedModel
from onnx_selenc._onnx.tensors import write_array

if TYPE_CHECKING:
    import onnxruntime as ort
from onnx_selenc._load.arguments import check_load_arguments, check_session_arguments
from onnx_selenc._load.handover import (
    _memory_candidates,
    file_references,
    mark_in_memory,
    refuse_file_references,
)
from onnx_selenc._load.opened import KeySource, RestoredModel, _open, _TagCheck
from onnx_selenc._load.restore import _patched, restore_model
from onnx_selenc._load.safety import check_session_options
from onnx_selenc._load.wipe import wipe

_DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


# Smaller tensors go to ONNX Runtime inside the serialised model: per tensor, an
# in-memory initializer costs more than copying a few KiB.
_MEMORY_THRESHOLD = 1 << 16

# ONNX Runtime (1.29 and later) writes a telemetry database and a device id under
# ~/.cache/Microsoft/DeveloperTools when it is imported, unless told not to first; it is
# imported lazily, after this. ORT_DISABLE_TELEMETRY=0 in the environment opts in.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


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
    allow_options: Collection[str] = (),
) -> ort.InferenceSession:
    """Build an ONNX Runtime session from a restored model, entirely in memory.

    ``allow_options``: provider option names the caller vouches for (see
    :func:`onnx_selenc._load.safety.check_session_options`).
    """
    import onnxruntime as ort

    check_session_arguments(providers, sess_options, allow_options)
    chosen = list(providers) if providers is not None else default_providers()
    check_session_options(sess_options, chosen, allow_options=allow_options)
    options = sess_options if sess_options is not None else ort.SessionOptions()
    keep_alive = []
    # Only a RestoredModel built elsewhere may still name files (restore_model's never do).
    if restored.base_dir is not None and file_references(restored.model):
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(restored.base_dir)
        )
    handed = {**restored.external_initializers, **restored.unchanged_initializers}
    if handed:
        names = list(handed)
        keep_alive = [ort.OrtValue.ortvalue_from_numpy(handed[n]) for n in names]
        options.add_external_initializers(names, keep_alive)
    _no_telemetry(ort)
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
    allow_options: Collection[str] = (),
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
        allow_options: provider option names unknown to the allow-list that the caller
            vouches for (never one known to write to disk).

    Returns:
        An ``onnxruntime.InferenceSession``.

    Raises:
        KeyMismatch, LevelNotGranted, InvalidBundle, NotEncrypted, FormatError,
        KeyFileError: see :func:`restore_model`.
        UnsafeSessionOptions: options that would write restored weights to disk.
        InvalidArgument: an argument of the wrong type or out of range (``level=-1``,
            ``level=1.9``, ``key={...}``, provider options that are not a mapping).

    Example:
        >>> sess = load_session("model.enc.onnx", key="tier2.key")  # doctest: +SKIP
        >>> sess.get_providers()  # doctest: +SKIP
        ['CPUExecutionProvider']
    """
    check_load_arguments(
        model_path,
        key=key,
        level=level,
        passphrase=passphrase,
        providers=providers,
        sess_options=sess_options,
        allow_options=allow_options,
    )
    chosen = list(providers) if providers is not None else None
    # Check the options before any decryption happens.
    check_session_options(sess_options, chosen or default_providers(), allow_options=allow_options)
    if sess_options is None:
        # In-memory initializers need options of our own: a caller's SessionOptions
        # would keep the restored weights alive (and apply them to its next session).
        return _load_in_memory(model_path, key, level, passphrase, chosen, allow_options)
    restored = restore_model(model_path, key=key, level=level, passphrase=passphrase)
    try:
        return build_session(
            restored, providers=chosen, sess_options=sess_options, allow_options=allow_options
        )
    finally:
        wipe(restored.external_initializers.values())  # ONNX Runtime has its own copy


def _load_in_memory(
    model_path: str | os.PathLike[str],
    key: KeySource,
    level: int | None,
    passphrase: str | None,
    providers: Sequence[str | tuple[str, Mapping[str, Any]]] | None,
    allow_options: Collection[str] = (),
) -> ort.InferenceSession:
    """:func:`load_session` with weights handed over in memory (see the module docstring)."""
    import onnxruntime as ort

    opened = _open(model_path, key, level, passphrase)
    opened.read_external()  # the one read of the external data: all below uses it
    model = opened.stripped.model
    skeleton, sources = opened.digest_inputs(in_place=True)
    gate = PatchGate()
    check = _TagCheck(opened, skeleton, sources, gate)
    if os.environ.get("ORT_LOAD_CONFIG_FROM_MODEL") == "1":
        check.verify()  # the model could set session options: trust it first
    elif check.worth_a_thread():
        check.start()
    else:
        check.verify()  # cheap: no tampered model ever reaches ONNX Runtime
    plain: list[bytearray] = []  # the decrypted payloads, zeroed below
    values: list[np.ndarray] = []
    try:
        payloads = opened.payloads(plain)
        _bundle.strip(model)
        names, values = _hand_over(model, payloads, opened.stripped, gate)
        refuse_file_references(model, opened.tensors, skeleton)
        options = ort.SessionOptions()
        # ONNX Runtime copies these while it builds the session: keep them alive till then.
        keep_alive = [ort.OrtValue.ortvalue_from_numpy(v) for v in values]
        if names:
            options.add_external_initializers(names, keep_alive)
        serialised = model.SerializeToString()
        chosen = list(providers) if providers is not None else default_providers()
        try:
            _no_telemetry(ort)
            session = ort.InferenceSession(serialised, options, providers=chosen)
            del keep_alive, options
        except Exception as exc:
            if not names or not type(exc).__module__.startswith("onnxruntime"):
                raise
            # An onnxruntime that takes in-memory initializers differently: build it the
            # ordinary way (one serialised model), after the check.
            check.verify()
            restored = restore_model(opened.path, key=opened.keys[-1], level=opened.target)
            session = build_session(restored, providers=providers, allow_options=allow_options)
            wipe([*restored.external_initializers.values()])
            return session
        check.verify()
    except BaseException:
        check.verify()  # a modified model is reported as that, before anything else
        raise
    finally:
        # ONNX Runtime holds its own copy now (or failed), and the tag check is done
        # with the file buffer (verify waits for it): the plaintext we hold can go.
        # Values that are views of the buffer go with it (zeroing them too doubled
        # the cost: tens of MB on a VGG).
        data = opened.stripped.data
        wipe([data, *(v for v in values if not np.may_share_memory(v, data)), *plain])
    return session


def _hand_over(
    model: onnx.ModelProto,
    payloads: Sequence[Sequence[_bundle.TensorPatch]],
    stripped: StrippedModel,
    gate: PatchGate | None = None,
) -> tuple[list[str], list[np.ndarray]]:
    """Prepare the model for ONNX Runtime; return the initializers it gets in memory.

    Restored tensors and large unchanged ones (views of the buffer read from disk,
    external data included) go in memory when ONNX Runtime can take them that way:
    main-graph initializers and Constant values that some node reads. The rest is
    written into the model.
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
        mark_in_memory(tensor, value.nbytes)
        names.append(name)
        values.append(value)
        return True

    for _, _, tensor, restored in _patched(model, payloads, stripped, gate):
        if not in_memory(tensor, restored):
            write_array(tensor, restored)
    for tensor in stripped.tensors:
        if tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue  # restored above
        view = stripped.array(tensor)
        if view is None or not in_memory(tensor, view):
            raw = stripped.raw(tensor)
            assert raw is not None
            tensor.raw_data = bytes(raw)
    return names, values


def _no_telemetry(ort: Any) -> None:
    """Turn ONNX Runtime's telemetry events off unless the caller opted in.

    The package sets ``ORT_DISABLE_TELEMETRY`` when imported, which stops the telemetry
    files only if onnxruntime was not imported before it; this stops later events.
    """
    if os.environ.get("ORT_DISABLE_TELEMETRY", "1") != "0":
        ort.disable_telemetry_events()
