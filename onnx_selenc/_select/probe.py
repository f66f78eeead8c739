"""A probe: one ONNX Runtime session that evaluates a model under any conv-weight values.

The chosen weights become graph inputs, so trying a masking or a partial
restoration is one ``run`` with other arrays, not a new session. Intermediate
tensors can be exposed as extra outputs (for activation statistics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from onnx_selenc._onnx.graph import ConvWeight
from onnx_selenc._onnx.metadata import strip_bundle
from onnx_selenc._onnx.tensors import owning_graph, read_array
from onnx_selenc._select.calibration import Calibration


class Probe:
    """Runs a model with the given conv weights fed as inputs.

    Args:
        model: the model (with its data loaded); it is not modified.
        weights: the conv weights to expose.
        extra_outputs: intermediate tensor names to return after the model's outputs.
        threads: ONNX Runtime intra-op threads (default: its own choice).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        weights: Sequence[ConvWeight],
        *,
        extra_outputs: Sequence[str] = (),
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        strip_bundle(probe)
        self.base: dict[str, np.ndarray] = {}
        self.names: dict[str, str] = {}
        existing_inputs = {i.name for i in probe.graph.input}
        for w in weights:
            self.base[w.address] = _hoist(probe, w, existing_inputs)
            self.names[w.address] = w.name
        self.n_outputs = len(probe.graph.output)
        for name in extra_outputs:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            probe.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        self.data_inputs = [
            i.name for i in self.session.get_inputs() if i.name not in set(self.names.values())
        ]
        first = self.session.get_inputs()[0].shape
        self.batch = first[0] if first and isinstance(first[0], int) and first[0] > 0 else 16

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        weights: Mapping[str, np.ndarray] | None = None,
        *,
        quiet: bool = False,
    ) -> list[np.ndarray]:
        """Run one batch with ``weights`` (by address) replacing the base values.

        ``quiet``: a failure is only raised, not also logged by ONNX Runtime (probing
        which input sizes a model takes fails on purpose).
        """
        values = {**self.base, **(weights or {})}
        full = {**feeds, **{self.names[k]: v for k, v in values.items()}}
        if not quiet:
            return self.session.run(None, full)
        import onnxruntime as ort

        options = ort.RunOptions()
        options.log_severity_level = 4
        return self.session.run(None, full, options)

    def run_all(
        self, calibration: Calibration, weights: Mapping[str, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Run every sample (in batches the model accepts) and concatenate the outputs."""
        parts = [self.run(b, weights) for b in calibration.batches(self.batch)]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _hoist(probe: onnx.ModelProto, w: ConvWeight, existing_inputs: set[str]) -> np.ndarray:
    """Turn a weight (initializer or Constant, any graph) into a main-graph input."""
    graph = owning_graph(probe, w.graph_path)
    values: np.ndarray | None = None
    if w.storage == "initializer":
        for i, init in enumerate(graph.initializer):
            if init.name == w.name:
                values = read_array(init, None)
                del graph.initializer[i]
                break
    else:
        for i, node in enumerate(graph.node):
            if node.op_type == "Constant" and node.output and node.output[0] == w.name:
                values = read_array(next(a.t for a in node.attribute if a.name == "value"), None)
                del graph.node[i]
                break
    if values is None:
        raise ValueError(f"weight {w.address} not found")
    if w.name not in existing_inputs:
        elem = helper.np_dtype_to_tensor_dtype(values.dtype)
        probe.graph.input.append(helper.make_tensor_value_info(w.name, elem, values.shape))
        existing_inputs.add(w.name)
    return values
