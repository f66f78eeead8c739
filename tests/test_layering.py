"""Data flows one way: a lower stage never imports a higher one.

Selection runs before sealing, the loader restores without masking, model I/O sits
below the digest. Each helper they share lives in the lower module both import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "onnx_selenc"

# module -> modules of a later (or unrelated higher) stage it must not import
FORBIDDEN = {
    "_probe": {"_bundle", "_sealing", "_seal", "_encrypt", "_pipeline"},
    "_pss": {"_bundle", "_sealing", "_seal", "_encrypt", "_pipeline"},
    "_selection": {"_bundle", "_sealing", "_masking", "_encrypt", "_pipeline"},
    "_loader": {"_masking", "_selection", "_encrypt", "_pipeline"},
    "_modelio": {"_digest", "_bundle", "_encrypt", "_pipeline"},
    "_tensors": {"_digest", "_modelio", "_bundle", "_encrypt", "_pipeline"},
    "_graph": {"_tensors", "_modelio", "_bundle", "_encrypt", "_pipeline"},
}


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):  # imports inside functions count too
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("onnx_selenc."):
            names.add(node.module.split(".")[1])
    return names


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_no_import_against_the_data_flow(module: str) -> None:
    assert not _imports(module) & FORBIDDEN[module]
