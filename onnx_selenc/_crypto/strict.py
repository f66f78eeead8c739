"""Strict reading of the JSON found in files: manifests, key files, payload tables.

Python's ``json`` accepts much that no file of ours contains and later code cannot
handle: ``NaN`` and ``Infinity`` (and ``1e999``, which parses to infinity), integers
of thousands of digits, nesting deep enough to exhaust the stack, repeated keys (the
last one silently wins), lone surrogates. :func:`load` refuses all of them, and the
typed readers below never coerce: ``true`` is not 1, ``1.0`` is not 1, ``"3"`` is not 3.
Every failure is the caller's :class:`FormatError` subclass, worded for the user.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from onnx_selenc.exceptions import FormatError

# No document of ours nests deeper than 4 levels (a payload table: list, entry, shape).
MAX_DEPTH = 16
# Every integer of ours fits in int64 (json itself refuses more than 4300 digits).
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

_ErrorType = type[FormatError]


class _Refused(ValueError):
    """A JSON value outside what the formats allow (raised inside the parser hooks)."""


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:24]} is out of range")
    return value


def _parse_constant(text: str) -> float:
    raise _Refused(f"{text} is not a number JSON allows")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise _Refused("an object repeats a key")
    return doc


def load(
    data: bytes | bytearray | memoryview,
    what: str,
    *,
    error: _ErrorType = FormatError,
    ascii_only: bool = False,
    walk: bool = True,
) -> Any:
    """Parse UTF-8 JSON bytes, refusing anything the module docstring lists.

    Args:
        data: the document.
        what: how messages name it ("the manifest", "key.json").
        error: the exception raised (``KeyFileError`` for key files).
        ascii_only: refuse any byte above 0x7f (canonical JSON is ASCII).
        walk: check depth, integer sizes and strings over the whole document. A caller
            that type-checks every value itself may skip it (payload tables: hundreds
            of entries on every load, where the walk would cost more than parsing).

    Raises:
        error: not (ASCII) UTF-8, not JSON, or a value the module docstring lists.
    """
    data = bytes(data)
    if ascii_only and not data.isascii():
        raise error(f"{what} is not ASCII text (truncated or edited)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not valid UTF-8 text (truncated or edited)") from None
    try:
        doc = json.loads(
            text,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=_object,
        )
    except _Refused as exc:
        raise error(f"{what} is malformed: {exc}") from None
    except RecursionError:
        raise error(f"{what} is malformed: it is nested too deeply") from None
    except json.JSONDecodeError:
        raise error(f"{what} is not valid JSON (truncated or edited)") from None
    except ValueError:  # int() past sys.get_int_max_str_digits() (4300 by default)
        raise error(f"{what} is malformed: an integer in it is too large") from None
    if walk:
        _check_tree(doc, what, error)
    return doc


def _check_tree(doc: object, what: str, error: _ErrorType) -> None:
    """Depth at most MAX_DEPTH, integers within int64, every string encodable (no lone
    surrogates from ``\\ud800``)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if type(value) is int:
            if not INT64_MIN <= value <= INT64_MAX:
                # Its size, not its digits: in a key file it may be a key written in decimal.
                digits = len(str(abs(value)))
                raise error(f"{what} is malformed: an integer of {digits} digits is too large")
        elif isinstance(value, str):
            if not value.isascii():
                _check_text(value, what, error)
        elif isinstance(value, list | dict):
            if depth > MAX_DEPTH:
                raise error(f"{what} is malformed: it is nested more than {MAX_DEPTH} deep")
            items: Iterable[Any] = value
            if isinstance(value, dict):
                for k in value:
                    if not k.isascii():
                        _check_text(k, what, error)
                items = value.values()
            stack.extend(
                (item, depth + 1) for item in items if isinstance(item, int | str | list | dict)
            )


def _check_text(value: str, what: str, error: _ErrorType) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is malformed: a string holds an unpaired surrogate") from None


# --- typed reading of fields, no coercion ---------------------------------------------
def is_int(value: object) -> bool:
    """A JSON integer: ``int`` but not ``bool`` (``isinstance(True, int)`` is true)."""
    return type(value) is int


def show(value: object) -> str:
    """A short rendering of a value for messages, as JSON writes it (``true``, ``"3"``)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def integer(
    value: object, name: str, lo: int = 0, hi: int = INT64_MAX, *, error: _ErrorType = FormatError
) -> int:
    """``value`` if it is an integer in ``lo..hi``, else ``error`` naming the field."""
    span = f"from {lo} to {hi}" if hi < INT64_MAX else f"of at least {lo}"
    if not is_int(value):
        raise error(f"{name} must be an integer {span}, not {show(value)}")
    if not lo <= value <= hi:  # type: ignore[operator]
        raise error(f"{name} is out of range ({value}; it must be an integer {span})")
    return value  # type: ignore[return-value]


def number(
    value: object, name: str, lo: float, hi: float, *, error: _ErrorType = FormatError
) -> float:
    """An integer or a (finite) float in ``lo..hi``; booleans are refused."""
    if type(value) not in (int, float) or not lo <= value <= hi:  # type: ignore[operator]
        raise error(f"{name} must be a number from {lo} to {hi}, not {show(value)}")
    return float(value)  # type: ignore[arg-type]


def string(
    value: object,
    name: str,
    pattern: re.Pattern[str] | None = None,
    *,
    error: _ErrorType = FormatError,
) -> str:
    """A string (matching ``pattern`` in full, when given)."""
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        expected = "a string" if pattern is None else f"a string like {pattern.pattern}"
        raise error(f"{name} must be {expected}, not {show(value)}")
    return value


def array(
    value: object, name: str, length: int | None = None, *, error: _ErrorType = FormatError
) -> list[Any]:
    """A list (of exactly ``length`` items, when given)."""
    if not isinstance(value, list):
        raise error(f"{name} must be a list, not {show(value)}")
    if length is not None and len(value) != length:
        raise error(f"{name} must have {length} entries, not {len(value)}")
    return value


def mapping(
    value: object,
    name: str,
    fields: frozenset[str] | None = None,
    *,
    error: _ErrorType = FormatError,
) -> dict[str, Any]:
    """An object (with exactly the keys ``fields``, when given)."""
    if not isinstance(value, dict):
        raise error(f"{name} must be an object, not {show(value)}")
    if fields is not None and set(value) != fields:
        unknown, missing = sorted(set(value) - fields), sorted(fields - set(value))
        raise error(f"{name} has unknown fields {unknown} or lacks {missing}")
    return value
