"""Session options that would write restored weights to disk are refused before decryption.

Provider options are checked against an allow-list per execution provider; session config
entries and environment variables against the dumps and caches ONNX Runtime reads them
for. The tables, and where their names come from, are in ``provider_options``.

Decisions:

- A switch whose value is "", "0" or "false" is off and accepted, even a cache switch; a
  path is never harmless ("0" is a file name) and is refused whenever it is not empty.
- ``allow_options`` lets the caller vouch for an option this check does not know; it
  cannot vouch for one known to write to disk.
- Profiling (``enable_profiling``) is accepted: the JSON profile holds node names, shapes,
  sizes and timings, all public in the encrypted file, and no tensor values.
- A provider given without a name (a bare options mapping) is checked against every
  provider's lists; no option name is safe on one provider and a writer on another.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from onnx_selenc._load import provider_options as _po
from onnx_selenc.exceptions import UnsafeSessionOptions

if TYPE_CHECKING:
    import onnxruntime as ort

# As InferenceSession takes providers: a name or (name, options); or options alone.
ProviderSpec: TypeAlias = str | tuple[str, Mapping[str, Any]] | Mapping[str, Any]

_OFF = frozenset({"", "0", "false"})

# The lists of all providers together, for options given without a provider name.
_ANY_SAFE = frozenset().union(*_po.SAFE_OPTIONS.values())
_ANY_WRITING = {
    name: kind for table in _po.WRITING_OPTIONS.values() for name, kind in table.items()
}
_ANY_SAFE_VALUES = {option: values for (_, option), values in _po.SAFE_VALUES.items()}


def check_session_options(
    sess_options: ort.SessionOptions | None,
    providers: Sequence[ProviderSpec] = (),
    *,
    allow_options: Collection[str] = (),
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Refuse options that would write restored weights to disk.

    Args:
        sess_options: the caller's session options, or None.
        providers: as given to ``InferenceSession``: names and (name, options) pairs; a
            bare options mapping is checked against every provider's lists.
        allow_options: provider option names the caller vouches never write to disk;
            they pass although this check does not know them.
        environ: the environment ONNX Runtime will read (default the process's).

    Raises:
        UnsafeSessionOptions: an option, config entry or environment variable that dumps
            or caches the model, or a provider option not known to be safe.
    """
    if sess_options is not None:
        _check_session(sess_options)
    allowed = frozenset(allow_options)
    for spec in providers:
        name, options = _split(spec)
        _check_provider(name, options, allowed)
    _check_environ(environ)


def _check_session(sess_options: ort.SessionOptions) -> None:
    """The optimised-model path, providers attached to the options, config entries."""
    if sess_options.optimized_model_filepath:
        raise UnsafeSessionOptions(
            "SessionOptions.optimized_model_filepath would write the restored (plaintext) "
            "weights to disk; unset it"
        )
    has_providers = getattr(sess_options, "has_providers", None)
    if has_providers is not None and has_providers():
        # Their options become config entries that cannot be listed, hence not checked.
        raise UnsafeSessionOptions(
            "providers attached with SessionOptions.add_provider (or add_provider_for_devices) "
            "carry options this check cannot read; pass them as providers=[(name, options)]"
        )
    for entry, kind in _po.WRITING_CONFIG_ENTRIES.items():
        if _is_on(_config_entry(sess_options, entry), kind):
            raise UnsafeSessionOptions(
                f"session config '{entry}' would write the restored model to disk; remove it"
            )


def _split(spec: ProviderSpec) -> tuple[str | None, Mapping[str, Any]]:
    """(provider name or None, its options) from one entry of ``providers``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        return None, spec
    name, options = spec
    return name, options


def _check_provider(name: str | None, options: Mapping[str, Any], allowed: frozenset[str]) -> None:
    if name is not None and name in _po.WRITING_PROVIDERS:
        raise UnsafeSessionOptions(
            f"{name} {_po.WRITING_PROVIDERS[name]}; use another execution provider"
        )
    for option, value in options.items():
        _check_option(name, str(option), value, allowed)


def _check_option(provider: str | None, option: str, value: Any, allowed: frozenset[str]) -> None:
    """Accept a writer that is off, an allowed option or a safe one; refuse the rest."""
    where = f" of {provider}" if provider is not None else ""
    writing = _po.WRITING_OPTIONS.get(provider, {}) if provider is not None else _ANY_WRITING
    kind = writing.get(option)
    if kind is not None:
        if _is_on(value, kind):
            raise UnsafeSessionOptions(_writer_message(option, where, kind, option in allowed))
        return
    values = _safe_values(provider, option)
    if values is not None and _text(value).lower() not in values:
        raise UnsafeSessionOptions(
            f"provider option '{option}'={_text(value)!r}{where} would write the restored "
            f"model to disk; use one of {sorted(values)}"
        )
    if option in allowed:
        return  # the caller vouches for it
    safe = _po.SAFE_OPTIONS.get(provider) if provider is not None else _ANY_SAFE
    if safe is not None and option in safe:
        return
    unknown = " (a provider this check does not know)" if safe is None else ""
    raise UnsafeSessionOptions(
        f"provider option '{option}'{where}{unknown} is not known to be safe: it may write "
        f"the restored model to disk. If you have checked that it never writes to disk, "
        f"pass allow_options=[{option!r}]"
    )


def _writer_message(option: str, where: str, kind: _po.Kind, vouched: bool) -> str:
    fix = "remove it" if kind != "flag" else "remove it or set it to 0"
    message = (
        f"provider option '{option}'{where} would write the restored model, or what is "
        f"compiled from it, to disk; {fix}"
    )
    if vouched:
        message += " (allow_options cannot vouch for an option known to write to disk)"
    return message


def _safe_values(provider: str | None, option: str) -> frozenset[str] | None:
    if provider is None:
        return _ANY_SAFE_VALUES.get(option)
    return _po.SAFE_VALUES.get((provider, option))


def _check_environ(environ: Mapping[str, str]) -> None:
    for name in sorted(environ):
        kind = _env_kind(name)
        if kind is not None and _is_on(environ[name], kind):
            raise UnsafeSessionOptions(
                f"environment variable {name}={environ[name]!r} makes ONNX Runtime write the "
                f"model, its tensors or a cache of them to disk; unset it"
            )


def _env_kind(name: str) -> _po.Kind | None:
    """How ``name`` switches a dump or cache on; None for a variable that does not."""
    upper = name.upper()
    if upper in _po.WRITING_ENV_VARS:
        return _po.WRITING_ENV_VARS[upper]
    if upper in _po.HARMLESS_ENV_VARS or not upper.startswith("ORT_") or "DISABLE" in upper:
        return None
    # A variable this list does not know yet, named for a dump or a cache.
    return "flag" if any(word in upper for word in _po.WRITING_ENV_WORDS) else None


def _is_on(value: Any, kind: _po.Kind) -> bool:
    text = _text(value)
    return text.lower() not in _OFF if kind == "flag" else text != ""


def _text(value: Any) -> str:
    return str(value).strip()


def _config_entry(sess_options: ort.SessionOptions, entry: str) -> str:
    try:
        return str(sess_options.get_session_config_entry(entry))
    except Exception:  # onnxruntime raises when the entry was never set
        return ""
