"""Session options that would write restored weights to disk are refused before decryption."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from onnx_selenc.exceptions import UnsafeSessionOptions

if TYPE_CHECKING:
    import onnxruntime as ort

# Provider options that make an execution provider write compiled weights to disk.
_DISK_CACHE_OPTIONS = (
    "trt_engine_cache_enable",
    "trt_dump_ep_context_model",
    "cache_dir",
    "ep_context_enable",
    "trt_ep_context_file_path",
)


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
