"""``config.json`` of a package: what a user needs to call the model, public facts only.

Inputs and outputs as ONNX Runtime reports them (name, dtype, shape with free
dimensions as their names or ``null``), opset, producer, labels where the model or
the user gives them, and how it is encrypted (levels, key id, the library that loads
it). Nothing here comes from a key: only the model's graph and its public manifest.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from onnx_selenc import __version__

CONFIG_FORMAT = "onnx-selenc-package"
# metadata_props that carry class labels, as exporters write them: Ultralytics (YOLO)
# writes ``names`` as a Python dict repr; others write JSON lists or id2label objects.
LABEL_KEYS = ("id2label", "names", "labels", "classes")
_OWN_PREFIX = "onnx_selenc."
Id2Label = Mapping[int, str] | Mapping[str, str] | Sequence[str]


def model_config(
    model: onnx.ModelProto,
    manifest: Mapping[str, Any],
    *,
    model_file: str,
    id2label: Id2Label | None = None,
    preprocessor_file: str | None = None,
) -> dict[str, Any]:
    """The ``config.json`` document of an encrypted model.

    Args:
        model: the encrypted model (external data not needed).
        manifest: its public manifest.
        model_file: the model's path in the package (``onnx/model.onnx``).
        id2label: class labels (index -> label, or a list); default: those in the
            model's ``metadata_props`` (``names``, ``id2label``, ``labels``, ``classes``).
        preprocessor_file: the preprocessing config's name in the package, if any.

    Returns:
        A JSON-ready dict.

    Raises:
        ValueError: ``id2label`` is not a list of labels or an index -> label map.
    """
    labels, source = (
        (normalise_id2label(id2label), "user")
        if id2label is not None
        else labels_from_metadata(model)
    )
    doc: dict[str, Any] = {
        "format": CONFIG_FORMAT,
        "model_file": model_file,
        "encrypted": True,
        "library_name": "onnx-selenc",
        "loader": {
            "library": "onnx-selenc",
            "function": "onnx_selenc.load_session",
            "packaged_with": __version__,
            "note": "without a key (plain onnxruntime) the model runs at level 0, degraded",
        },
        "levels": int(manifest["levels"]),
        "key_id": str(manifest["key_id"]),
        "inputs": io_specs(model, inputs=True),
        "outputs": io_specs(model, inputs=False),
        "opset": {o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
        "ir_version": int(model.ir_version),
        "producer": {"name": model.producer_name, "version": model.producer_version},
    }
    if labels is not None:
        doc |= {
            "id2label": labels,
            "label2id": {v: int(k) for k, v in labels.items()},
            "num_labels": len(labels),
            "labels_source": source,
        }
    metadata = {p.key: p.value for p in model.metadata_props if not p.key.startswith(_OWN_PREFIX)}
    if metadata:
        doc["metadata_props"] = metadata
    if preprocessor_file is not None:
        doc["preprocessor_config"] = preprocessor_file
    return doc


def io_specs(model: onnx.ModelProto, *, inputs: bool) -> list[dict[str, Any]]:
    """The graph's inputs (initializers excluded, as ONNX Runtime does) or outputs.

    Outputs are shape-inferred where ONNX can (a declared ``y_d1`` that is always 4
    becomes 4, as ONNX Runtime reports it); the declared ones otherwise.
    """
    graph = model.graph
    if inputs:
        weights = {t.name for t in graph.initializer}
        values = [v for v in graph.input if v.name not in weights]
    else:
        values = list(_inferred(model).graph.output)
    return [{"name": v.name, **_type_spec(v.type)} for v in values]


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    # Only the graph is needed (external data is not loaded); a model past protobuf's
    # limit, a custom op or a graph ONNX cannot infer keeps its declared outputs.
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return model


def _type_spec(t: onnx.TypeProto) -> dict[str, Any]:
    kind = t.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type"):
        return {"type": kind or "unknown", "dtype": None, "shape": None}
    tensor = t.tensor_type if kind == "tensor_type" else t.sparse_tensor_type
    dtype = None
    if tensor.elem_type:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        if tensor.elem_type == onnx.TensorProto.BFLOAT16:
            dtype = "bfloat16"  # numpy has none; onnx maps it to its storage type
    shape: list[int | str | None] | None = None
    if tensor.HasField("shape"):
        shape = [
            int(d.dim_value)
            if d.HasField("dim_value")
            else (d.dim_param if d.HasField("dim_param") else None)
            for d in tensor.shape.dim
        ]
    kind_name = "tensor" if kind == "tensor_type" else "sparse_tensor"
    return {"type": kind_name, "dtype": dtype, "shape": shape}


def labels_from_metadata(model: onnx.ModelProto) -> tuple[dict[str, str] | None, str | None]:
    """Class labels in the model's ``metadata_props``, and the key they came from."""
    props = {p.key: p.value for p in model.metadata_props}
    for key in LABEL_KEYS:
        if key in props:
            parsed = _parse_literal(props[key])
            try:
                return normalise_id2label(parsed), f"metadata_props:{key}"
            except ValueError:
                continue  # not labels after all (a free-text "classes" note): look further
    return None, None


def normalise_id2label(labels: object) -> dict[str, str]:
    """``{"0": label, ...}`` (Hugging Face's ``id2label``) from a list or an index map.

    Raises:
        ValueError: not a non-empty list of strings, or a map of indices to strings.
    """
    if isinstance(labels, Sequence) and not isinstance(labels, str | bytes):
        items: list[tuple[object, object]] = list(enumerate(labels))
    elif isinstance(labels, Mapping):
        items = list(labels.items())
    else:
        raise ValueError(
            f"labels must be a list or an index -> label map, not {type(labels).__name__}"
        )
    out: dict[str, str] = {}
    for k, v in items:
        index = _index(k)
        if index is None or not isinstance(v, str):
            raise ValueError(f"labels must map indices to strings; got {k!r}: {v!r}")
        out[str(index)] = v
    if not out:
        raise ValueError("labels are empty")
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _index(k: object) -> int | None:
    if isinstance(k, bool):
        return None
    if isinstance(k, int):
        return k if k >= 0 else None
    if isinstance(k, str) and k.isdigit():
        return int(k)
    return None


def _parse_literal(text: str) -> object:
    """JSON, else a Python literal (Ultralytics' ``{0: 'person', ...}``); never code."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
