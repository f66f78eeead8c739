"""Graph walk: find every convolution weight in an ONNX model, wherever it lives.

A weight can be an initializer or the output of a Constant node, in the main graph
or in an If/Loop/Scan subgraph (resolved through the enclosing scopes, including
Identity/Cast chains there), stored inline or in an external data file, shared by
several convs, in float16 or float64, or quantized behind a DequantizeLinear.
Convs inside model-local functions are found once the functions are inlined
(:func:`inline_conv_functions`, which :func:`encrypt` applies first). Every other
node whose op type names a convolution is reported with the reason, never skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnx_selenc.exceptions import UnsupportedModel

ONNX_DOMAINS = ("", "ai.onnx")  # the standard operator set, by either spelling
_MS_DOMAIN = "com.microsoft"
# (domain, op type) -> index of its weight input, for the ops whose weight has the
# standard layout: the first two axes index the kernel (Conv: C_out x C_in/g;
# ConvTranspose: C_in x C_out/g), the rest are positions within the kernel.
_STANDARD = {"Conv": 1, "ConvTranspose": 1, "ConvInteger": 1, "QLinearConv": 3, "DeformConv": 1}
# ONNX Runtime's documented contrib convolutions (ContribOperators.md) with that layout.
_CONTRIB = {"FusedConv": 1, "NhwcConv": 1, "NhwcFusedConv": 1, "QLinearConv": 3,
            "ConvTransposeWithDynamicPads": 1}  # fmt: skip
CONV_WEIGHT_INPUT: dict[tuple[str, str], int] = {
    **{(d, op): i for d in ONNX_DOMAINS for op, i in _STANDARD.items()},
    **{(_MS_DOMAIN, op): i for op, i in _CONTRIB.items()},
}
# Ops with ConvTranspose's weight layout (C_in x C_out/g), for the importance scorers.
TRANSPOSED_OPS = frozenset({"ConvTranspose", "ConvTransposeWithDynamicPads"})
# Shape-preserving ops a weight may pass through on its way to a conv.
_PASS_THROUGH = {"Identity": 0, "Cast": 0, "DequantizeLinear": 0}
_SUPPORTED_DTYPES = {
    np.dtype(np.float16),
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.int8),
    np.dtype(np.uint8),
}


def conv_weight_index(node: onnx.NodeProto) -> int | None:
    """Index of the weight input of a convolution this tool handles, else None."""
    return CONV_WEIGHT_INPUT.get((node.domain, node.op_type))


def looks_like_conv(node: onnx.NodeProto) -> bool:
    """Whether a node's op type names a convolution (handled or not)."""
    return "conv" in node.op_type.lower()


@dataclass(frozen=True)
class ConvWeight:
    """One convolution weight tensor and where it lives.

    Attributes:
        address: stable, unambiguous address: the graph path steps and the tensor name,
            each with ``%`` and ``/`` percent-escaped, joined by ``/`` (see
            :func:`tensor_address`); a main-graph tensor whose name has neither is its name.
        name: the tensor's name in its graph (initializer name or Constant node output).
        graph_path: the node-index/attribute steps from the main graph to the owning graph.
        storage: ``"initializer"`` or ``"constant"``.
        shape: tensor shape; kernels are indexed by the first two axes.
        dtype: numpy dtype name of the stored values.
        consumers: ``"<op type> '<node name>'"`` of every conv that reads the tensor.
        via: ops between the tensor and the conv (e.g. ``DequantizeLinear``).
        external: whether the values live in an external data file.
        data_inputs: the activation each consumer convolves (its input 0).
        groups: each consumer's ``group`` attribute.
        op_types: each consumer's op type.
        consumer_paths: the graph path of each consumer (a subgraph may read an outer
            weight).
    """

    address: str
    name: str
    graph_path: tuple[str, ...]
    storage: str
    shape: tuple[int, ...]
    dtype: str
    consumers: tuple[str, ...]
    via: tuple[str, ...]
    external: bool
    data_inputs: tuple[str, ...] = ()
    groups: tuple[int, ...] = ()
    op_types: tuple[str, ...] = ()
    consumer_paths: tuple[tuple[str, ...], ...] = ()

    @property
    def n_kernels(self) -> int:
        return int(self.shape[0] * self.shape[1])

    @property
    def kernel_size(self) -> int:
        return int(np.prod(self.shape[2:], dtype=np.int64)) if len(self.shape) > 2 else 1

    @property
    def n_weights(self) -> int:
        return self.n_kernels * self.kernel_size

    @property
    def in_main_graph(self) -> bool:
        """Whether the weight and every conv reading it are in the main graph (what
        the calibration-based scorers can probe)."""
        return not self.graph_path and not any(self.consumer_paths)


@dataclass(frozen=True)
class UnsupportedConv:
    """A conv whose weight the tool cannot encrypt, and why."""

    node: str
    graph_path: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class ConvInventory:
    """Everything the walk found: encryptable weights (sorted by address) and refusals."""

    weights: tuple[ConvWeight, ...]
    unsupported: tuple[UnsupportedConv, ...]

    @property
    def total_weights(self) -> int:
        return sum(w.n_weights for w in self.weights)

    def by_address(self) -> dict[str, ConvWeight]:
        return {w.address: w for w in self.weights}


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("/", "%2F")


def _unescape(part: str) -> str:
    return part.replace("%2F", "/").replace("%2f", "/").replace("%25", "%")


def tensor_address(graph_path: tuple[str, ...], name: str) -> str:
    """The address of tensor ``name`` in the graph at ``graph_path``; see :func:`split_address`.

    Exporters put ``/`` and ``:`` in names (tf2onnx: ``conv2d/kernel:0``), so every
    part is escaped: a joined string must never be read back as another path.
    """
    return "/".join(_escape(p) for p in (*graph_path, name))


def split_address(address: str) -> tuple[tuple[str, ...], str]:
    """``(graph_path, name)`` of a :func:`tensor_address` address."""
    parts = [_unescape(p) for p in address.split("/")]
    return tuple(parts[:-1]), parts[-1]


def node_label(node: onnx.NodeProto, index: int) -> str:
    domain = f"{node.domain}:" if node.domain not in ONNX_DOMAINS else ""
    return f"{domain}{node.op_type} '{node.name or f'#{index}'}'"


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """Yield ``(step, subgraph)`` for every graph-valued attribute of ``node``."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for j, g in enumerate(attr.graphs):
                yield f"{attr.name}[{j}]", g


def conv_functions(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(domain, name)`` of every model-local function that holds a convolution,
    directly, in a subgraph, or through a call of another such function."""
    local = {(f.domain, f.name): f for f in model.functions}
    holds: dict[tuple[str, str], bool] = {}

    def nodes_hold_conv(nodes: Iterable[onnx.NodeProto]) -> bool:
        for node in nodes:
            if looks_like_conv(node) or (
                (node.domain, node.op_type) in local and visit((node.domain, node.op_type))
            ):
                return True
            if any(nodes_hold_conv(sub.node) for _, sub in subgraphs(node)):
                return True
        return False

    def visit(fid: tuple[str, str]) -> bool:
        if fid not in holds:
            holds[fid] = False  # a recursive call chain is not a conv by itself
            holds[fid] = nodes_hold_conv(local[fid].node)
        return holds[fid]

    return [fid for fid in local if visit(fid)]


def inline_conv_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every local function that holds a convolution inlined.

    Function bodies hold no initializers and are shared by every call, so a weight
    inside one has no place of its own; inlined, each call's weights are ordinary
    graph values. Functions without convolutions are kept as they are. Returns the
    model itself when there is nothing to inline.
    """
    chosen = conv_functions(model)
    if not chosen:
        return model
    import onnx.inliner

    try:
        return onnx.inliner.inline_selected_functions(model, chosen)
    except Exception as exc:  # the C++ inliner raises plain RuntimeError / ValueError
        names = ", ".join(f"{d}:{n}" for d, n in chosen)
        raise UnsupportedModel(
            f"cannot inline the local functions holding convolutions ({names}): {exc}"
        ) from None


@dataclass(frozen=True)
class _Source:
    storage: str
    graph_path: tuple[str, ...]
    name: str
    tensor: onnx.TensorProto


@dataclass
class _Scope:
    """One graph's names: its own weights, producers and inputs, and its parent scope."""

    path: tuple[str, ...]
    sources: dict[str, _Source]
    producers: dict[str, tuple[int, onnx.NodeProto]]
    inputs: set[str]
    sparse: set[str]
    parent: _Scope | None = None


@dataclass
class _Found:
    source: _Source
    consumers: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)
    data_inputs: list[str] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    op_types: list[str] = field(default_factory=list)
    consumer_paths: list[tuple[str, ...]] = field(default_factory=list)


def walk_conv_weights(model: onnx.ModelProto) -> ConvInventory:
    """Find every convolution weight in ``model`` (ONNX and ONNX Runtime contrib ops).

    Args:
        model: the model; external data may or may not be loaded.

    Returns:
        The inventory of encryptable weights and of convs that cannot be handled.
    """
    found: dict[str, _Found] = {}
    unsupported: list[UnsupportedConv] = []
    _walk(model.graph, (), None, found, unsupported)
    for f in model.functions:
        for idx, node in enumerate(f.node):
            if looks_like_conv(node):
                unsupported.append(
                    UnsupportedConv(
                        node_label(node, idx),
                        (),
                        f"inside model-local function {f.domain}:{f.name}, which is not "
                        "inlined (encrypt inlines functions holding convolutions)",
                    )
                )
    weights = []
    for address in sorted(found):
        entry = found[address]
        source = entry.source
        t = source.tensor
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        weights.append(
            ConvWeight(
                address=address,
                name=source.name,
                graph_path=source.graph_path,
                storage=source.storage,
                shape=tuple(int(d) for d in t.dims),
                dtype=dtype.name,
                consumers=tuple(entry.consumers),
                via=tuple(entry.via),
                external=t.data_location == onnx.TensorProto.EXTERNAL,
                data_inputs=tuple(entry.data_inputs),
                groups=tuple(entry.groups),
                op_types=tuple(entry.op_types),
                consumer_paths=tuple(entry.consumer_paths),
            )
        )
    return ConvInventory(weights=tuple(weights), unsupported=tuple(unsupported))


def _walk(
    graph: onnx.GraphProto,
    path: tuple[str, ...],
    parent: _Scope | None,
    found: dict[str, _Found],
    unsupported: list[UnsupportedConv],
) -> None:
    sources: dict[str, _Source] = {}
    inputs = {i.name for i in graph.input}
    for init in graph.initializer:
        sources.setdefault(init.name, _Source("initializer", path, init.name, init))
        inputs.discard(init.name)  # old IR lists initializers as inputs too
    sparse = {s.values.name for s in graph.sparse_initializer}
    producers: dict[str, tuple[int, onnx.NodeProto]] = {}
    for idx, node in enumerate(graph.node):
        for out in node.output:
            producers[out] = (idx, node)
        if node.op_type == "Constant" and node.domain in ONNX_DOMAINS and node.output:
            # Addressed by the node's output: the value tensor's own name may differ
            # from it or be empty (spox, onnx.helper).
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    sources[node.output[0]] = _Source("constant", path, node.output[0], a.t)
                elif a.name == "sparse_value":
                    sparse.add(node.output[0])
    scope = _Scope(path, sources, producers, inputs, sparse, parent)
    for idx, node in enumerate(graph.node):
        w_index = conv_weight_index(node)
        if w_index is not None:
            _resolve_weight(node, idx, w_index, scope, found, unsupported)
        elif looks_like_conv(node):
            unsupported.append(
                UnsupportedConv(
                    node_label(node, idx),
                    path,
                    f"op {node.domain or 'ai.onnx'}:{node.op_type} is not a convolution "
                    "onnx-selenc knows the weight layout of",
                )
            )
        for step, sub in subgraphs(node):
            _walk(sub, (*path, f"{idx}:{step}"), scope, found, unsupported)


def _resolve_weight(
    node: onnx.NodeProto,
    idx: int,
    w_index: int,
    scope: _Scope,
    found: dict[str, _Found],
    unsupported: list[UnsupportedConv],
) -> None:
    label = node_label(node, idx)
    if len(node.input) <= w_index or not node.input[w_index]:
        unsupported.append(UnsupportedConv(label, scope.path, "has no weight input"))
        return
    source, via, reason = _trace(node.input[w_index], scope)
    if source is None:
        unsupported.append(UnsupportedConv(label, scope.path, reason))
        return
    t, name = source.tensor, source.name
    dtype = helper.tensor_dtype_to_np_dtype(t.data_type) if t.data_type else None
    if dtype is None or np.dtype(dtype) not in _SUPPORTED_DTYPES:
        dname = onnx.TensorProto.DataType.Name(t.data_type)
        unsupported.append(UnsupportedConv(label, scope.path, f"weight '{name}' has dtype {dname}"))
        return
    if len(t.dims) < 3 or any(d <= 0 for d in t.dims):
        unsupported.append(
            UnsupportedConv(label, scope.path, f"weight '{name}' has shape {list(t.dims)}")
        )
        return
    entry = found.setdefault(tensor_address(source.graph_path, name), _Found(source))
    entry.consumers.append(label)
    entry.data_inputs.append(node.input[0] if node.input else "")
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    entry.groups.append(int(group))
    entry.op_types.append(node.op_type)
    entry.consumer_paths.append(scope.path)
    for op in via:
        if op not in entry.via:
            entry.via.append(op)


def _trace(name: str, scope: _Scope) -> tuple[_Source | None, list[str], str]:
    """Follow a weight input through pass-through ops and enclosing scopes to its tensor.

    Returns the source (or None), the ops passed, and the reason when there is none.
    """
    via: list[str] = []
    here: _Scope | None = scope
    while here is not None:
        if name in here.sparse:
            return (
                None,
                via,
                (
                    f"weight '{name}' is a sparse tensor; onnx-selenc encrypts dense weights "
                    "only (store it as a dense initializer)"
                ),
            )
        if name in here.sources:
            return here.sources[name], via, ""
        if name in here.producers:
            p_idx, p_node = here.producers[name]
            if p_node.op_type in _PASS_THROUGH and p_node.domain in ONNX_DOMAINS:
                via.append(p_node.op_type)
                name = p_node.input[_PASS_THROUGH[p_node.op_type]]
                continue
            where = f" in subgraph {'/'.join(here.path)}" if here.path else ""
            return (
                None,
                via,
                (f"weight '{name}' is computed at run time by {node_label(p_node, p_idx)}{where}"),
            )
        if name in here.inputs:
            if here.parent is None:
                return None, via, f"weight '{name}' is a graph input, supplied at run time"
            return (
                None,
                via,
                (
                    f"weight '{name}' is an input of subgraph {'/'.join(here.path)} (a loop-"
                    "carried or scanned value), computed at run time"
                ),
            )
        here = here.parent  # a subgraph reads outer values by name
    return None, via, f"weight '{name}' is not defined in any enclosing graph"
