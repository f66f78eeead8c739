"""Zero the buffers the loader owns once ONNX Runtime has its own copy of the weights.

Freed memory is not cleared: without this, the restored kernels (in the file buffer,
in fresh arrays) and the decrypted payloads stay readable in the process's heap long
after the load. ONNX Runtime copies initializers handed to it in memory
(``AddExternalInitializers``: "the data will be copied into the graph") and the
serialised model, so these buffers are ours alone once the session exists.

What remains (README, "What the files and the process reveal"): ONNX Runtime's own copy
for as long as the session lives, and ``bytes`` objects Python cannot overwrite (the
serialised model handed to ONNX Runtime, which holds the small restored tensors).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def wipe(buffers: Iterable[Any]) -> None:
    """Overwrite each writable buffer (``bytearray``, writable ``memoryview``, numpy
    array) with zeros; read-only ones (``bytes``, views of them) are left as they are."""
    for buffer in buffers:
        if isinstance(buffer, np.ndarray):
            if buffer.flags.writeable and buffer.size:
                buffer[...] = 0
            continue
        view = memoryview(buffer)
        if not view.readonly and view.nbytes:
            np.asarray(view)[...] = 0
