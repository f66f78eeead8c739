"""Key material as text: recognised wherever it could be published, never echoed.

Error messages end up on terminals, in CI logs and in serving logs, so a message about
a key field names the field and what is wrong with it, never its value (not even a
prefix: 40 hex digits are 160 bits of a 256-bit key). :func:`holds_key_text` is the one
test for "this text carries a key" that every publishing path shares (a package's
preprocessor config and labels, MLflow metadata and tags).
"""

from __future__ import annotations

import base64
import binascii
import re

from onnx_selenc.exceptions import KeyFileError

# Every key file, plain or protected, carries this format value (also JSON-escaped).
KEY_FORMAT_TEXT = "onnx-selenc-key"
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")  # a level or signing key, in either case
# A 32- or 64-byte key (a level key; a level key and its signing key) in base64 or
# base64url, padded or not, standing alone (not part of a longer run).
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{43,88}={0,2}(?![A-Za-z0-9+/_=-])")
_KEY_SIZES = (32, 64)


def holds_key_text(text: str) -> bool:
    """Whether ``text`` holds onnx-selenc key material: a key file's format value, 64 hex
    digits (a raw key, either case), or a 32- or 64-byte value in base64."""
    if KEY_FORMAT_TEXT in text or _HEX_KEY.search(text):
        return True
    return any(_is_base64_key(m.group()) for m in _B64_RUN.finditer(text))


def _is_base64_key(run: str) -> bool:
    # Mixed classes: a long word or identifier is not random bytes in base64.
    body = run.rstrip("=")
    if not (any(c.isdigit() for c in body) and any(c.isupper() for c in body)):
        return False
    if not any(c.islower() for c in body):
        return False
    padded = body + "=" * (-len(body) % 4)
    try:
        if "-" in body or "_" in body:
            raw = base64.urlsafe_b64decode(padded)
        else:
            raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) in _KEY_SIZES


def secret_hex(value: object, what: str, digits: int | tuple[int, ...]) -> bytes:
    """Key material written as ``digits`` lower-case hex digits (one of them, for a
    tuple), checked without ever putting the value (or part of it) in the message.

    Raises:
        KeyFileError: not a string of exactly that many lower-case hex digits; the
            message names ``what`` and the problem only.
    """
    sizes = (digits,) if isinstance(digits, int) else digits
    expected = f"{' or '.join(map(str, sizes))} lower-case hex digits"
    if not isinstance(value, str):
        raise KeyFileError(f"{what} must be a string of {expected}, not {_json_type(value)}")
    if len(value) not in sizes:
        raise KeyFileError(f"{what} must be {expected}; it has {len(value)} characters")
    if re.fullmatch(r"[0-9a-f]*", value) is None:
        problem = (
            "upper-case hex digits"
            if re.fullmatch(r"[0-9a-fA-F]*", value)
            else "characters that are not hex digits"
        )
        raise KeyFileError(f"{what} must be {expected}; it holds {problem} (value not shown)")
    return bytes.fromhex(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def shown_path(value: str) -> str:
    """``value`` for a message about a missing file, unless it may be key material
    (a key pasted where its file's path was expected)."""
    if holds_key_text(value) or len(value) > 4096:
        return "(the value is not shown: it may be key material)"
    return value
