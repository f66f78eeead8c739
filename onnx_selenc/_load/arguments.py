"""The loader's public arguments, type- and range-checked before any file is read.

Python would coerce or crash later, deep in the loader: ``level=1.9`` became level 1,
``level=True`` level 1, a dict as the key a ``TypeError`` from ``os.fspath``, provider
options as a list an ``AttributeError``. Each is one :class:`InvalidArgument` here,
naming the argument and what it must be.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from onnx_selenc._crypto.keys import LevelKey
from onnx_selenc.exceptions import InvalidArgument


def check_load_arguments(
    model_path: object,
    *,
    key: object,
    level: object = None,
    passphrase: object = None,
    providers: object = None,
    sess_options: object = None,
    allow_options: object = (),
) -> None:
    """Refuse arguments of :func:`load_session` / :func:`restore_model` that are not
    what their docstrings state.

    Raises:
        InvalidArgument: the first argument that is not; the message names it.
    """
    check_path(model_path, "model_path")
    if not isinstance(key, LevelKey):
        check_path(key, "key", also="or a LevelKey")
    check_level(level)
    if passphrase is not None and not isinstance(passphrase, str):
        raise InvalidArgument(f"passphrase must be a string or None, not {_kind(passphrase)}")
    check_session_arguments(providers, sess_options, allow_options)


def check_session_arguments(providers: object, sess_options: object, allow_options: object) -> None:
    """What :func:`build_session` takes besides the restored model (see above)."""
    check_providers(providers)
    if sess_options is not None:
        import onnxruntime as ort

        if not isinstance(sess_options, ort.SessionOptions):
            raise InvalidArgument(
                "sess_options must be an onnxruntime.SessionOptions or None, "
                f"not {_kind(sess_options)}"
            )
    check_names(allow_options, "allow_options")


def check_path(value: object, name: str, *, also: str = "") -> None:
    """A ``str`` or ``os.PathLike`` naming a file (not bytes, not empty)."""
    what = f"{name} must be a path (str or os.PathLike){' ' + also if also else ''}"
    if not isinstance(value, str | os.PathLike):
        raise InvalidArgument(f"{what}, not {_kind(value)}")
    if not isinstance(os.fspath(value), str) or not os.fspath(value):
        raise InvalidArgument(f"{what}: a non-empty text path")


def check_level(level: object) -> None:
    """``None`` or an ``int`` of at least 0 (``True`` and ``1.0`` are not levels)."""
    if level is None:
        return
    if isinstance(level, bool) or not isinstance(level, int | np.integer):
        raise InvalidArgument(f"level must be an int (0 or more) or None, not {_kind(level)}")
    if level < 0:
        raise InvalidArgument(f"level must be 0 or more, got {int(level)}")


def check_providers(providers: object) -> None:
    """``None`` or a list of provider names, ``(name, options)`` pairs or options
    mappings, as ``onnxruntime.InferenceSession`` takes them."""
    if providers is None:
        return
    if isinstance(providers, str | bytes) or not isinstance(providers, Sequence):
        raise InvalidArgument(
            "providers must be a list of provider names or (name, options) pairs, "
            f"not {_kind(providers)}"
        )
    for i, spec in enumerate(providers):
        where = f"providers[{i}]"
        if isinstance(spec, str):
            continue
        if isinstance(spec, Mapping):
            _check_options(spec, where)
            continue
        if not isinstance(spec, tuple | list) or len(spec) != 2 or not isinstance(spec[0], str):
            raise InvalidArgument(
                f"{where} must be a provider name or a (name, options) pair, not {_kind(spec)}"
            )
        _check_options(spec[1], f"the options of {where} ({spec[0]})")


def _check_options(options: object, where: str) -> None:
    if not isinstance(options, Mapping):
        raise InvalidArgument(
            f"{where} must be a mapping of option names to values, not {_kind(options)}"
        )
    bad = next((k for k in options if not isinstance(k, str)), None)
    if bad is not None:
        raise InvalidArgument(f"{where}: option names must be strings, not {_kind(bad)}")


def check_names(values: object, name: str) -> None:
    """A collection of strings (a bare string is refused: it would be its letters)."""
    if isinstance(values, str | bytes) or not isinstance(values, Collection):
        raise InvalidArgument(f"{name} must be a collection of strings, not {_kind(values)}")
    bad = next((v for v in values if not isinstance(v, str)), None)
    if bad is not None:
        raise InvalidArgument(f"{name} must hold strings only, not {_kind(bad)}")


def _kind(value: Any) -> str:
    """The type of a value, for messages (never the value: it may be a key)."""
    return f"{type(value).__name__}"
