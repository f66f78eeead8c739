"""The attack harness's files: the encrypted copies it attacks, their conv weights and
service levels (:mod:`samples.paper.attacks`)."""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from samples.paper import _common

# Today's data-free default; data-driven options (importance="activation"/"pss",
# allocation="sensitivity") go through the same dict once encrypt() accepts them.
DEFAULT_ENCRYPTION: dict[str, Any] = {
    "levels": 5,
    "budget": 0.01,
    "allocation": "balanced",
    "importance": "magnitude",
    "masking": "empirical",
    "seed": 0,
}


# ------------------------------------------------------------------ encryption


@contextlib.contextmanager
def encrypted_copy(plain: Path, **encryption: Any) -> Iterator[tuple[Path, Path]]:
    """Encrypt ``plain`` into a fresh temporary folder; yield (encrypted model, owner key).

    The folder (and the key in it) is removed afterwards: only measurements are kept.

    Args:
        plain: the plain ONNX model.
        **encryption: keyword arguments for :func:`onnx_selenc.encrypt`, over
            :data:`DEFAULT_ENCRYPTION`.
    """
    from onnx_selenc import encrypt

    kwargs = {**DEFAULT_ENCRYPTION, **encryption}
    with tempfile.TemporaryDirectory(prefix="selenc-attack-") as tmp:
        out, key = Path(tmp) / f"{plain.stem}.enc.onnx", Path(tmp) / "owner.key"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encrypt(plain, out, key_file=key, **kwargs)
        yield out, key


def conv_weights(path: Path) -> dict[str, np.ndarray]:
    """The conv weight tensors of an ONNX model, by initializer name, in graph order."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    return {
        node.input[1]: numpy_helper.to_array(inits[node.input[1]])
        for node in model.graph.node
        if node.op_type == "Conv" and node.input[1] in inits
    }


# --------------------------------------------------------------- service levels


def level_table(enc: Path, key: Path, levels: int, evaluate: Any) -> list[dict[str, Any]]:
    """Evaluate an encrypted model at every level (level 0: the file as distributed)."""
    from onnx_selenc import load_session

    rows = []
    for level in range(levels + 1):
        sess = (
            _common.ort_session(enc)
            if level == 0
            else load_session(enc, key=key, level=level, providers=["CPUExecutionProvider"])
        )
        rows.append({"level": level, **evaluate(sess)})
    return rows
