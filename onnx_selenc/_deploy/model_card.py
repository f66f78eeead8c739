"""``README.md`` of a package: a Hugging Face-style model card for an encrypted model.

Built from the public manifest and ``config.json`` only, so it can say nothing secret:
the tier structure, the key id and owner public key, the inputs and outputs, how to
load a tier (Python and CLI), and what plain ONNX Runtime gives (level 0, degraded).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnx_selenc import __version__

# Placeholders of the card's loading code, which a reader (or a test) replaces.
FOLDER_PLACEHOLDER = "path/to/this/folder"
KEY_PLACEHOLDER = "path/to/tier.key"
KEY_ENV = "ONNX_SELENC_KEY"


def model_card(
    manifest: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    title: str,
    files: Sequence[tuple[str, str]],
) -> str:
    """The model card of a package.

    Args:
        manifest: the public manifest (``inspect_model(...).manifest``).
        config: the package's ``config.json`` document (:func:`model_config`).
        title: the card's heading.
        files: ``(path in the package, what it is)`` for the table of files.

    Returns:
        Markdown with a YAML header (Hugging Face model card style).
    """
    enc = manifest["encrypted"]
    model_file = str(config["model_file"])
    sections = [
        _front_matter(),
        f"# {title}",
        f"This ONNX model is **selectively encrypted** with onnx-selenc: {enc['weights']} of "
        f"its {enc['conv_weights']} convolution weights ({100 * float(enc['fraction']):.3f}%) "
        "hold random values. It runs in any ONNX Runtime, but it only performs as intended "
        "once a key restores the original weights, in memory, up to the key's tier. Key "
        "files are not part of this repository: ask the model owner for a key of your tier.",
        "## Files\n\n| file | what it is |\n| --- | --- |\n"
        + "\n".join(f"| `{_cell(p)}` | {what} |" for p, what in files),
        _tiers(manifest),
        _io_section(config),
        _loading(model_file, config),
        "## Without a key\n\n"
        f'`onnxruntime.InferenceSession("{model_file}")` loads and runs the model as it '
        "is, with no key and no onnx-selenc: that is the **degraded level-0 model** (the "
        "encrypted kernels keep their random values), whose outputs are not the model's. "
        "Only `onnx_selenc.load_session` with a key restores a tier.",
        f"_Packaged by onnx-selenc {__version__}._",
    ]
    return "\n\n".join(sections) + "\n"


def _front_matter() -> str:
    tags = ["onnx", "onnx-selenc", "encrypted"]
    # inference: false keeps a hub's hosted widget from serving the level-0 model.
    return (
        "---\nlibrary_name: onnx\ntags:\n"
        + "".join(f"- {t}\n" for t in tags)
        + ("inference: false\n---")
    )


def _tiers(manifest: Mapping[str, Any]) -> str:
    levels = int(manifest["levels"])
    level_weights = list(manifest["level_weights"])
    total = int(manifest["encrypted"]["weights"]) or 1
    rows = []
    for m, restored in enumerate(level_weights):
        if m == 0:
            what = "nothing: the encrypted kernels keep their random values (plain onnxruntime)"
        elif m == levels:
            what = "everything: the original model, bit for bit"
        else:
            what = f"{100 * int(restored) / total:.1f}% of the encrypted weights"
        rows.append(f"| {m} | {restored} | {what} |")
    lines = [
        "## Tiers",
        "",
        f"- key id: `{manifest['key_id']}` (a key file for another model is refused)",
        f"- levels (tiers): {levels}, cumulative: a level-m key also opens every level below m",
        f"- cipher: {manifest['cipher']}, key chain: {manifest['chain']}",
    ]
    if manifest.get("owner_public"):
        lines.append(
            f"- owner public key ({manifest.get('signature', 'Ed25519')}): "
            f"`{manifest['owner_public']}`; every load checks the manifest's signature "
            "against it (`onnx-selenc keys info tier.key` shows a key's)"
        )
    lines += [
        "",
        "| level | weights restored | what the level restores |",
        "| --- | --- | --- |",
        *rows,
    ]
    return "\n".join(lines)


def _io_section(config: Mapping[str, Any]) -> str:
    lines = ["## Inputs and outputs", "", "| | name | dtype | shape |", "| --- | --- | --- | --- |"]
    for role in ("inputs", "outputs"):
        for spec in config[role]:
            shape = "?" if spec["shape"] is None else _shape_text(spec["shape"])
            lines.append(
                f"| {role[:-1]} | `{_cell(spec['name'])}` | {spec['dtype'] or spec['type']} "
                f"| {_cell(shape)} |"
            )
    opsets = ", ".join(f"{d} {v}" for d, v in config["opset"].items())
    producer = " ".join(str(v) for v in config["producer"].values() if v)
    lines += ["", f"Opset: {opsets}." + (f" Producer: {producer}." if producer else "")]
    # Each note its own paragraph: Markdown joins consecutive lines into one.
    if "id2label" in config:
        labels = list(config["id2label"].values())
        shown = ", ".join(f"`{_cell(v)}`" for v in labels[:10])
        more = f" and {len(labels) - 10} more" if len(labels) > 10 else ""
        lines += ["", f"Labels ({len(labels)}, `id2label` in `config.json`): {shown}{more}."]
    if "preprocessor_config" in config:
        lines += ["", f"Preprocessing: `{config['preprocessor_config']}`, as stated by the owner."]
    return "\n".join(lines)


def _loading(model_file: str, config: Mapping[str, Any]) -> str:
    feeds = _example_feeds(config["inputs"])
    code = [
        "from pathlib import Path",
        "",
        "import numpy as np",
        "import onnx_selenc",
        "",
        f'folder = Path("{FOLDER_PLACEHOLDER}")  # this repository, downloaded',
        f'key = "{KEY_PLACEHOLDER}"  # or onnx_selenc.key_from_env("{KEY_ENV}")',
        f"session = onnx_selenc.load_session(folder / {_path_expr(model_file)}, key=key)",
        "print(session.get_providers())",
    ]
    if feeds is None:
        code.append("# feeds: one array per input, dtypes and shapes as in config.json")
    else:
        code += [
            f"feeds = {feeds}  # free dimensions set to 1",
            "outputs = session.run(None, feeds)",
        ]
    inputs = [spec["name"] for spec in config["inputs"]]
    npy = "--input x.npy" if len(inputs) == 1 else " ".join(f"--input {n}={n}.npy" for n in inputs)
    path = f"{FOLDER_PLACEHOLDER}/{model_file}"
    return (
        "## How to load\n\n"
        "Install onnx-selenc (from its repository or a wheel built from it), then:\n\n"
        "```python\n" + "\n".join(code) + "\n```\n\n"
        "From the command line (the key file's path, or its content in an environment "
        "variable, as a mounted secret gives it):\n\n"
        "```sh\n"
        f"onnx-selenc run {path} --key {KEY_PLACEHOLDER} {npy}\n"
        f"{KEY_ENV}={KEY_PLACEHOLDER} onnx-selenc run {path} --key-env {KEY_ENV} {npy}\n"
        "```\n\n"
        "The level restored is the key's; `onnx-selenc inspect` shows this manifest, and "
        "the onnx-selenc documentation (docs/SERVING.md) serves a tier with MLflow."
    )


def _example_feeds(inputs: Sequence[Mapping[str, Any]]) -> str | None:
    """``{"x": np.zeros((1, 3, 8, 8), dtype="float32")}``, or None where zeros do not fit."""
    parts = []
    for spec in inputs:
        dtype, shape = spec["dtype"], spec["shape"]
        if spec["type"] != "tensor" or dtype is None or shape is None:
            return None
        try:
            if np.dtype(dtype).kind not in "biufc":
                return None
        except TypeError:
            return None  # bfloat16 and the like: numpy cannot make them
        dims = tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)
        # json.dumps: a double-quoted string literal that Python reads as the same name.
        parts.append(f"{json.dumps(spec['name'])}: np.zeros({dims!r}, dtype={json.dumps(dtype)})")
    return "{" + ", ".join(parts) + "}"


def _path_expr(relative: str) -> str:
    return " / ".join(f'"{part}"' for part in relative.split("/"))


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell and inline code."""
    return str(text).replace("|", "\\|").replace("`", "'").replace("\n", " ")
