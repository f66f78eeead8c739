"""What the conformance benchmark reads of a model: its conv nodes (main graph, subgraphs,
functions), its opsets, and every weight, compared bit for bit (:mod:`benchmarks.conformance`)."""

from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


def node_label(node: onnx.NodeProto, index: int) -> str:
    """How onnx-selenc names a node in its reports (``<op type> '<name or #index>'``)."""
    return f"{node.op_type} '{node.name or f'#{index}'}'"


def _graphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        for j, g in enumerate(attr.graphs):
            yield f"{attr.name}[{j}]", g


def _nodes(model: onnx.ModelProto) -> Iterator[tuple[str, int, onnx.NodeProto]]:
    """``(scope, index, node)`` for every node: main graph, subgraphs, functions."""

    def walk(
        nodes: Sequence[onnx.NodeProto], scope: str
    ) -> Iterator[tuple[str, int, onnx.NodeProto]]:
        for i, node in enumerate(nodes):
            yield scope, i, node
            for step, g in _graphs(node):
                yield from walk(g.node, f"{scope}/{i}:{step}")

    yield from walk(model.graph.node, "")
    for f in model.functions:
        yield from walk(f.node, f"function {f.domain}:{f.name}")


def conv_nodes(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """``(scope, op type, name)`` of every node whose op type contains "Conv".

    Unnamed nodes are ``#<index>``, as onnx-selenc's reports name them. Calls of
    model-local functions (say ``local:ConvRelu``) are not convolutions: the convs inside
    the function's body are counted, as nodes of that function.
    """
    local = {(f.domain, f.name) for f in model.functions}
    return [
        (s, n.op_type, n.name or f"#{i}")
        for s, i, n in _nodes(model)
        if "Conv" in n.op_type and (n.domain, n.op_type) not in local
    ]


def conv_views(model: onnx.ModelProto) -> list[list[tuple[str, str, str]]]:
    """The conv nodes as the file has them and, with model-local functions, inlined too.

    A tool may report a function's conv once (where it is defined) or once per call
    (after inlining, as encrypt does): either view, fully covered, satisfies the contract.
    """
    views = [conv_nodes(model)]
    if model.functions:
        from onnx import inliner

        views.append(conv_nodes(inliner.inline_local_functions(model)))
    return views


_LABEL = re.compile(r"^(?P<op>.*?) '(?P<name>.*)'$", re.S)


def parse_label(label: str) -> tuple[str, str]:
    """``"<domain:>Op 'name'"`` (onnx-selenc's node label) -> ``(Op, name)``."""
    m = _LABEL.match(label)
    if m is None:
        return label.split(":")[-1], ""
    return m["op"].split(":")[-1], m["name"]


def uncovered(
    view: Sequence[tuple[str, str, str]], reported: Sequence[str]
) -> tuple[list[str], int]:
    """The conv nodes of ``view`` that no reported label accounts for, and how many did.

    Each reported label accounts for one node: the node of that op type and name, else
    (a tool that renames, e.g. on inlining) any remaining node of that op type.
    """
    left = collections.Counter(parse_label(r) for r in reported)
    unmatched = []
    for scope, op, name in view:
        if left[(op, name)] > 0:
            left[(op, name)] -= 1
        else:
            unmatched.append((scope, op, name))
    by_op = collections.Counter()
    for (op, _), n in left.items():
        by_op[op] += n
    missing = []
    for scope, op, name in unmatched:
        if by_op[op] > 0:
            by_op[op] -= 1
        else:
            missing.append(f"{op} '{name}' in {scope or 'main graph'}")
    return missing, len(view) - len(missing)


def opset_text(model: onnx.ModelProto) -> str:
    parts = [f"{o.version}" if o.domain in ("", "ai.onnx") else f"{o.domain}:{o.version}"
             for o in model.opset_import]  # fmt: skip
    main = [p for p in parts if ":" not in p]
    rest = sorted(
        p for p in parts if ":" in p and not p.startswith("ai.onnx.") and "microsoft" not in p
    )
    return f"IR {model.ir_version}, opset " + ", ".join(main + rest)


def tensors(model: onnx.ModelProto) -> dict[str, Any]:
    """Every stored tensor, by a scope-qualified key: initializers, sparse, Constants."""
    out: dict[str, Any] = {}

    def graph(g: onnx.GraphProto, scope: str) -> None:
        for t in g.initializer:
            out[f"{scope}init:{t.name}"] = t
        for sp in g.sparse_initializer:
            out[f"{scope}sparse:{sp.values.name}"] = sp
        nodes(g.node, scope)

    def nodes(ns: Sequence[onnx.NodeProto], scope: str) -> None:
        for i, n in enumerate(ns):
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    out[f"{scope}{i}:{a.name}:{n.output[0] if n.output else ''}"] = a.t
                elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
                    out[f"{scope}{i}:{a.name}:{n.output[0] if n.output else ''}"] = a.sparse_tensor
            for step, g in _graphs(n):
                graph(g, f"{scope}{i}:{step}/")

    graph(model.graph, "")
    for f in model.functions:
        nodes(f.node, f"function {f.domain}:{f.name}/")
    return out


def _array(t: Any, base_dir: str | None, replaced: dict[str, np.ndarray]) -> tuple[Any, ...]:
    if isinstance(t, onnx.SparseTensorProto):
        return (_array(t.values, base_dir, {}), _array(t.indices, base_dir, {}), tuple(t.dims))
    if t.name in replaced:
        a = np.asarray(replaced[t.name])
    else:
        a = numpy_helper.to_array(t, base_dir or "")
    return (a.dtype.str, a.shape, a.tobytes())


def compare_weights(original: onnx.ModelProto, orig_dir: Path, restored: Any) -> str | None:
    """``None`` if every tensor of ``restored`` equals the original's bit for bit."""
    a, b = tensors(original), tensors(restored.model)
    base = str(restored.base_dir) if restored.base_dir is not None else None
    replaced = dict(restored.external_initializers)
    if a.keys() == b.keys():
        for key, t in a.items():
            if _array(t, str(orig_dir), {}) != _array(b[key], base, replaced):
                return f"tensor {key!r} differs from the original"
        return None
    # The graph was restructured (encrypt inlines model-local functions holding convs):
    # then every restored tensor must hold a value the original holds, and vice versa.
    digest = {hashlib.sha256(repr(_array(t, str(orig_dir), {})).encode()).hexdigest(): k
              for k, t in a.items()}  # fmt: skip
    got = {hashlib.sha256(repr(_array(t, base, replaced)).encode()).hexdigest(): k
           for k, t in b.items()}  # fmt: skip
    if got.keys() - digest.keys():
        key = got[sorted(got.keys() - digest.keys())[0]]
        return f"restored tensor {key!r} holds no value of the original (graph restructured)"
    if digest.keys() - got.keys():
        key = digest[sorted(digest.keys() - got.keys())[0]]
        return f"original tensor {key!r} is in no restored tensor (graph restructured)"
    return None


# --- running -------------------------------------------------------------------------
