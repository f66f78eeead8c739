"""The key of a serving environment: an environment variable or a mounted key file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from onnx_selenc._crypto.keys import LevelKey, key_from_env, read_key_file
from onnx_selenc._crypto.secret_text import shown_path
from onnx_selenc.exceptions import KeyFileError, KeyNotConfigured

DEFAULT_KEY_ENV = "ONNX_SELENC_KEY"
DEFAULT_PASSPHRASE_ENV = "ONNX_SELENC_PASSPHRASE"


def serving_key(
    *,
    key_env: str | None = DEFAULT_KEY_ENV,
    key_file: str | os.PathLike[str] | None = None,
    passphrase_env: str | None = DEFAULT_PASSPHRASE_ENV,
) -> LevelKey:
    """The key of a serving environment: ``$key_env`` if set, else ``key_file``.

    Args:
        key_env: environment variable holding a key file's path or content.
        key_file: a key file path (e.g. a mounted secret), used when ``key_env`` is unset.
        passphrase_env: environment variable holding a protected key file's passphrase.

    Returns:
        The key.

    Raises:
        KeyNotConfigured: neither source holds a key, or the path they name is missing.
        KeyFileError: malformed key, or a protected key without (or with a wrong) passphrase.

    Example:
        >>> key = serving_key(key_env="ONNX_SELENC_KEY")  # doctest: +SKIP
    """
    passphrase = os.environ.get(passphrase_env) if passphrase_env else None
    if key_env and key_env in os.environ:
        value, source = os.environ[key_env], f"${key_env}"
        content = value.lstrip().startswith("{")
        try:
            key = key_from_env(key_env, passphrase=passphrase)
        except FileNotFoundError:
            raise KeyNotConfigured(
                f"{source} names the key file {shown_path(value)}, which does not exist"
            ) from None
        except KeyFileError:
            raw = value.encode("utf-8", "surrogateescape") if content else _read_small(value)
            where = source if content else f"{value} (from {source})"
            _explain_protected(raw, where, passphrase, passphrase_env)
            raise
        return key
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise KeyNotConfigured(
                f"the key file {path} configured for this model does not exist"
                + (f" and ${key_env} is not set" if key_env else "")
            )
        try:
            return read_key_file(path, passphrase=passphrase)
        except KeyFileError:
            _explain_protected(_read_small(path), str(path), passphrase, passphrase_env)
            raise
    raise KeyNotConfigured(
        "no onnx-selenc key for this model: "
        + (
            f"set the environment variable {key_env} to a key file's path or content"
            if key_env
            else "no key environment variable is configured"
        )
        + ", or configure a key file (model_config={'key_file': PATH})"
    )


def _read_small(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(64 * 1024)
    except OSError:
        return b""


def _explain_protected(
    raw: bytes, source: str, passphrase: str | None, passphrase_env: str | None
) -> None:
    """Re-raise a missing-passphrase error naming the variable that should hold it."""
    if passphrase is not None:
        return
    try:
        protected = "protected" in json.loads(raw)
    except (ValueError, TypeError, RecursionError):  # malformed: the KeyFileError says so
        return
    if protected:
        where = (
            f"set the environment variable {passphrase_env}"
            if passphrase_env
            else "configure passphrase_env"
        )
        raise KeyFileError(f"{source} is a passphrase-protected key: {where}") from None
