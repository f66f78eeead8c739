"""Keyed wiring as a stage of encryption: plan, permute, what level 1 seals, and the
calibrated level 0 measured again on the wired file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._encrypt.verify import keep_originals
from onnx_selenc._onnx.channels import WiringPlan, plan_wiring
from onnx_selenc._onnx.graph import ConvInventory, split_address
from onnx_selenc._onnx.tensors import graph_constants, weight_tensor, write_array
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.levels import LevelMetric, LevelReport
from onnx_selenc._select.objective import quality
from onnx_selenc._select.probe import Probe
from onnx_selenc._select.wiring import wire_layers

# calibrate_levels' default: the cuts are searched (and level 0 measured) on this many.
MAX_SEARCH_SAMPLES = 256


def wire_model(
    model: onnx.ModelProto,
    inventory: ConvInventory,
    originals: Mapping[str, np.ndarray | bytes],
    seed: int,
) -> tuple[WiringPlan, list[_bundle.TensorPatch], Mapping[str, np.ndarray | bytes]]:
    """Wire every conv of ``model`` that qualifies, in place (masking already applied).

    Returns:
        The plan (what is wired, and why the rest is not), the level-1 patches that put
        the channels back, and ``originals`` (the self-check's) grown by the wired
        tensors no masking touched; a masked one's original predates its mask.
    """
    plan = plan_wiring(model, inventory)
    # Its own generator: the masking's draws stay what they are without wiring.
    wired, before = wire_layers(model, plan.wired, np.random.default_rng([seed, 2]))
    fresh = {a: v for a, v in before.items() if a not in originals}
    grown = {**keep_originals(fresh), **originals}
    patches = [_bundle.wiring_patch(t.address, t.dtype, t.shape, t.order) for t in wired]
    return plan, patches, grown


def rescore_level_zero(
    public: onnx.ModelProto,
    inventory: ConvInventory,
    originals: Mapping[str, np.ndarray | bytes],
    report: LevelReport,
    search: Calibration,
    held_out: Calibration | None,
    metric: LevelMetric | None,
) -> LevelReport:
    """``report`` with level 0 measured on the wired public file, not the masked one.

    Calibration measured the levels in the true channel order; only level 0 changes
    with wiring. The error-share quality is 0 at level 0 by definition, so only
    classifiers' agreement and a caller's metric are measured again (past the size
    whose originals are kept as digests, the report stays as it was).
    """
    if report.objective == "mse" or any(isinstance(v, bytes) for v in originals.values()):
        return report
    plain = onnx.ModelProto()
    plain.CopyFrom(public)
    by_address = inventory.by_address()
    tensors = graph_constants(plain.graph)
    for address, values in originals.items():
        w = by_address.get(address)
        tensor = weight_tensor(plain, w) if w is not None else tensors[split_address(address)[1]]
        write_array(tensor, np.asarray(values))

    def score(data: Calibration) -> float:
        reference = Probe(plain, []).run_all(data)
        test = Probe(public, []).run_all(data)
        if metric is not None:
            return float(metric(reference, test))
        return quality(reference, test, report.objective)

    if search.n > MAX_SEARCH_SAMPLES:
        search = search.take(np.linspace(0, search.n - 1, MAX_SEARCH_SAMPLES).astype(int))
    held = report.held_out
    return dataclasses.replace(
        report,
        calibration=(score(search), *report.calibration[1:]),
        held_out=None if held is None or held_out is None else (score(held_out), *held[1:]),
    )
