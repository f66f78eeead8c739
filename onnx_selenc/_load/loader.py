"""The loader's public names, from the modules that implement each step.

``opened`` (key, manifest, tag), ``external`` (external data read once into memory),
``restore`` (originals written back), ``handover`` (what ONNX Runtime gets apart from
the graph), ``session`` (ONNX Runtime session, in memory), ``safety`` (options that
would write to disk).
"""

from onnx_selenc._load.handover import _memory_candidates
from onnx_selenc._load.opened import (
    INLINE_EXTERNAL_LIMIT,
    KeySource,
    RestoredModel,
    _open,
    _reads_files,
    open_bytes,
    open_key,
    resolve_model_path,
)
from onnx_selenc._load.restore import _Locator, restore_model, restore_opened
from onnx_selenc._load.safety import check_session_options
from onnx_selenc._load.session import (
    build_session,
    default_providers,
    load_session,
)

__all__ = [
    "INLINE_EXTERNAL_LIMIT",
    "KeySource",
    "RestoredModel",
    "_Locator",
    "_memory_candidates",
    "_open",
    "_reads_files",
    "build_session",
    "check_session_options",
    "default_providers",
    "load_session",
    "open_bytes",
    "open_key",
    "resolve_model_path",
    "restore_model",
    "restore_opened",
]
