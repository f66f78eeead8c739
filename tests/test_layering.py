"""Data flows one way: a lower stage never imports a higher one.

Stages by folder: ``_onnx`` (model files and tensors) and ``_crypto`` (sealing
primitives) at the bottom, ``_select`` (what to encrypt) above ``_onnx``, ``_encrypt``
and ``_load`` above those, ``_deploy`` and ``_cli`` on top. Within a folder, selection
runs before sealing, the loader restores without masking, model I/O sits below the
digest; each helper they share lives in the lower module both import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "onnx_selenc"
LOWER_FIRST = ["_onnx", "_crypto", "_select", "_encrypt", "_load", "_deploy", "_cli"]
# Folders a stage may not import at all (beyond the order above: _select knows nothing
# of sealing, the loader nothing of selection).
FORBIDDEN_FOLDERS = {
    "_onnx": {"_crypto", "_select", "_encrypt", "_load", "_deploy", "_cli"},
    "_crypto": {"_select", "_encrypt", "_load", "_deploy", "_cli"},
    "_select": {"_crypto", "_encrypt", "_load", "_deploy", "_cli"},
    "_load": {"_select", "_encrypt", "_deploy", "_cli"},
    "_encrypt": {"_deploy", "_cli"},
}
FORBIDDEN_MODULES = {
    "_onnx.graph": {"_onnx.tensors", "_onnx.modelio"},
    "_onnx.tensors": {"_onnx.modelio"},
}


def _imports(path: Path) -> set[str]:
    """``onnx_selenc``-relative dotted names a module imports (inside functions too)."""
    names: set[str] = set()
    package = path.relative_to(PACKAGE).parent.parts  # e.g. ("_select",)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:  # relative: resolved against the module's own package
            base = package[: len(package) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        elif (node.module or "").startswith("onnx_selenc"):
            module = (node.module or "").removeprefix("onnx_selenc").lstrip(".")
        else:
            continue
        if module:
            names.add(module)
        names.update(f"{module}.{a.name}".lstrip(".") for a in node.names)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN_FOLDERS))
def test_no_stage_imports_a_later_one(folder: str) -> None:
    for path in _modules(folder):
        later = {n for n in _imports(path) if n.split(".")[0] in FORBIDDEN_FOLDERS[folder]}
        assert not later, f"{path.relative_to(PACKAGE)} imports {sorted(later)}"


@pytest.mark.parametrize("module", sorted(FORBIDDEN_MODULES))
def test_no_module_imports_a_higher_one_in_its_folder(module: str) -> None:
    path = PACKAGE / (module.replace(".", "/") + ".py")
    assert not _imports(path) & FORBIDDEN_MODULES[module]


def test_every_stage_folder_exists() -> None:
    assert all((PACKAGE / folder / "__init__.py").is_file() for folder in LOWER_FIRST)
