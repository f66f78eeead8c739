"""The serving environment of a logged model: its requirements and the package it carries.

onnx-selenc is not on a package index, so a logged model cannot ask pip for it. The
model carries the ``onnx_selenc`` package itself, as an MLflow ``code_paths`` entry:
MLflow copies it into the model's ``code/`` folder and puts that folder on ``sys.path``
before it unpickles the model. The copy is taken from the imported package's own
folder, which works for every install (editable, wheel, ``PYTHONPATH``); a wheel built
at log time would need the source tree and a build backend, which a wheel install lacks.

The requirements are then the package's own dependencies, pinned to the versions
installed while logging (those the model was logged and checked with), plus the ONNX
Runtime distribution the caller names for the serving host.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

import onnx_selenc
from onnx_selenc._deploy.package_files import is_key_file

# Both install the module ``onnxruntime`` and cannot share an environment; the serving
# host's hardware decides, so the caller names one (CPU unless told otherwise).
RUNTIMES = ("onnxruntime", "onnxruntime-gpu")
DEFAULT_RUNTIME = "onnxruntime"
# The oldest ONNX Runtime the loader supports (pyproject's cpu/gpu extras).
RUNTIME_FLOOR = "1.18"
# What the package imports at run time (pyproject's dependencies); MLflow pins itself.
CORE_DEPENDENCIES = ("onnx", "numpy", "cryptography")
_CODE_SUFFIXES = (".py", ".json")
_CODE_FILES = ("py.typed",)


def runtime_requirement(runtime: str | None) -> list[str]:
    """The requirement line of the ONNX Runtime distribution ``runtime`` names.

    Args:
        runtime: ``"onnxruntime"`` or ``"onnxruntime-gpu"`` (pinned to the version
            installed here if it is, else ``>=`` the oldest supported), a full
            requirement such as ``"onnxruntime-gpu==1.20.1"`` (used as given), or
            ``None`` (no runtime: the serving image brings its own).

    Raises:
        ValueError: not a requirement of an ``onnxruntime`` distribution.
    """
    if runtime is None:
        return []
    try:
        req = Requirement(runtime)
    except InvalidRequirement as exc:
        raise ValueError(f"runtime must be a requirement such as 'onnxruntime': {exc}") from None
    name = req.name.lower().replace("_", "-")
    if not name.startswith("onnxruntime"):
        raise ValueError(
            f"runtime must name an ONNX Runtime distribution ({', '.join(RUNTIMES)}), "
            f"got {runtime!r}"
        )
    if req.specifier or req.url:
        return [str(req)]
    try:
        return [f"{req.name}=={importlib.metadata.version(req.name)}"]
    except importlib.metadata.PackageNotFoundError:
        # Not installed here (a GPU target logged from a CPU machine): any supported one.
        return [f"{req.name}>={RUNTIME_FLOOR}"]


def serving_requirements(runtime: str | None = DEFAULT_RUNTIME) -> list[str]:
    """The pinned pip requirements of the serving environment (MLflow adds itself).

    Args:
        runtime: see :func:`runtime_requirement`.
    """
    core = [f"{d}=={importlib.metadata.version(d)}" for d in CORE_DEPENDENCIES]
    return [*core, *runtime_requirement(runtime)]


def stage_package(dest: Path) -> Path:
    """Copy the imported ``onnx_selenc`` package's source into ``dest/onnx_selenc``.

    Only source and package data are copied (``*.py``, ``*.json``, ``py.typed``; no
    caches), and a key file found among them is refused: nothing secret may ride along.

    Returns:
        The copied package folder, for ``code_paths``.

    Raises:
        ValueError: a key file inside the package folder.
    """
    src = Path(onnx_selenc.__file__).resolve().parent
    out = dest / "onnx_selenc"
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if not f.is_file() or "__pycache__" in rel.parts:
            continue
        if f.suffix not in _CODE_SUFFIXES and f.name not in _CODE_FILES:
            continue
        if f.suffix != ".py" and is_key_file(f):
            raise ValueError(f"{f} is an onnx-selenc key file inside the package: remove it")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out / rel)
    return out
