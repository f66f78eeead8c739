"""The encryption pipeline in memory: walk -> importance -> allocation -> selection and
masking -> calibrated levels -> sealing, one function per stage (``encrypt_model``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto.keys import LevelKey, new_owner_key
from onnx_selenc._encrypt.options import (
    DATA_DRIVEN_SCORERS,
    CalibratedLevels,
    EncryptOptions,
    FixedLevels,
    check_options,
    options_of,
)
from onnx_selenc._encrypt.sealing import seal_levels
from onnx_selenc._encrypt.verify import keep_originals
from onnx_selenc._onnx.graph import (
    ConvInventory,
    ConvWeight,
    conv_functions,
    inline_conv_functions,
    walk_conv_weights,
)
from onnx_selenc._onnx.modelio import PROTO_LIMIT
from onnx_selenc._onnx.tensors import read_array, weight_tensor, write_array
from onnx_selenc._select.activation import activation_scorer
from onnx_selenc._select.allocation import cap_layer_shares
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.importance import score_kernels
from onnx_selenc._select.levels import TOLERANCE, LevelReport, calibrate_levels
from onnx_selenc._select.liveness import live_levels
from onnx_selenc._select.masking import (
    MaskedLayer,
    kernel_matrix,
    mask_selection,
    unmaskable_weights,
)
from onnx_selenc._select.selection import (
    Selection,
    allocate_balanced,
    allocate_uniform,
    at_least_one_per_level,
    filter_layers,
    grow_counts,
    select,
)
from onnx_selenc._select.sensitivity import SensitivityAllocator
from onnx_selenc.exceptions import (
    LevelCountWarning,
    LevelTargetWarning,
    SelencError,
    UnsupportedModel,
)

# Data-driven scorers and allocators (calibration-based) plug in here: given the
# model, the chosen weights and their current values, return scores / kernel counts.
ScoreProvider = Callable[
    [onnx.ModelProto, Sequence[ConvWeight], Mapping[str, np.ndarray]], Mapping[str, np.ndarray]
]
CountProvider = Callable[
    [
        onnx.ModelProto,
        Sequence[ConvWeight],
        Mapping[str, np.ndarray],
        Mapping[str, np.ndarray],
        int,
    ],
    Mapping[str, int],
]
# Up to this many bytes of encrypted weights the fixed level split is checked with
# forward passes (``_liveness``); past it a probe session's copy costs too much.
LIVENESS_BYTES = 512 << 20
LIVENESS_ATTEMPTS = 6  # at most 32x the budget's kernels before giving up with a warning
LIVENESS_GROW = 32  # ... and only while the levels hold fewer kernels than this each


@dataclass(frozen=True)
class EncryptedModel:
    """An encrypted model in memory, with its owner key (the output of the pipeline)."""

    model: onnx.ModelProto
    owner_key: LevelKey
    selection: Selection
    inventory: ConvInventory
    masked: tuple[MaskedLayer, ...]
    level_report: LevelReport | None = None
    importance: str = ""  # the scorer and allocation used, defaults resolved
    allocation: str = ""
    # What the encrypted weights were before masking, by key, for the self-check: the
    # arrays themselves, or past ORIGINALS_IN_MEMORY bytes a checksum of each (_seal).
    originals: Mapping[str, np.ndarray | bytes] = field(default_factory=dict)


def encrypt_model(
    model: onnx.ModelProto,
    *,
    options: EncryptOptions | None = None,
    calibration: Calibration | None = None,
    scores: ScoreProvider | None = None,
    counts: CountProvider | None = None,
    owner_key: LevelKey | None = None,
    **keywords: Any,
) -> EncryptedModel:
    """In-memory core of :func:`encrypt` (the model must have its data loaded).

    One function per stage: walk, importance, allocation, selection and masking,
    calibrated levels, sealing. ``scores``/``counts`` replace the built-in scorers and
    allocators (research hooks); ``owner_key`` re-uses a key (tests, re-encryption).
    The model is modified in place and returned inside the result. ``keywords`` build
    the options as 0.1's arguments did (``levels=``, ``budget=``, ...).
    """
    if _bundle.is_encrypted(model):
        raise SelencError("this model is already encrypted by onnx-selenc")
    options = options_of(options, keywords, deprecated=False)
    plan = _plan(options, calibration, scores, counts)
    walked = _walk(model, options.layers)
    rng = np.random.default_rng(options.seed)
    sub_seed = int(rng.integers(2**31))
    layer_scores = _score(walked, plan, calibration, options, sub_seed, scores, rng)
    layer_counts, sensitivity = _allocate(
        walked, plan, calibration, options, sub_seed, counts, layer_scores
    )
    selection, masked = _select_and_mask(
        walked, options, layer_scores, layer_counts, calibration, rng
    )
    level_report = None
    if isinstance(options.split, CalibratedLevels):
        assert calibration is not None
        selection, level_report = _calibrate(
            walked, selection, masked, options.split, options.objective, calibration,
            sensitivity, sub_seed,
        )  # fmt: skip
    owner = owner_key or new_owner_key(options.levels)
    if owner.level != options.levels or owner.levels != options.levels:
        raise ValueError("the owner key must be a top-level key for the same number of levels")
    manifest_raw, blobs, signature = seal_levels(
        walked.model,
        selection,
        masked,
        walked.inventory.by_address(),
        walked.inventory,
        owner,
        _selection_params(plan, options, level_report),
    )
    _bundle.attach(walked.model, manifest_raw, blobs, signature)
    return EncryptedModel(
        walked.model,
        owner,
        selection,
        walked.inventory,
        tuple(masked),
        level_report,
        importance=plan.importance,
        allocation=plan.allocation,
        originals=walked.originals,
    )


@dataclass(frozen=True)
class _Plan:
    """The scorer and allocator in use (defaults resolved against the calibration)."""

    importance: str
    allocation: str


@dataclass(frozen=True)
class _Walked:
    """The walk's result: the model (functions inlined), what it holds, what is chosen."""

    model: onnx.ModelProto
    inventory: ConvInventory
    chosen: list[ConvWeight]
    arrays: dict[str, np.ndarray]  # original values of the chosen weights
    originals: Mapping[str, np.ndarray | bytes]  # what the self-check compares with


def _plan(
    options: EncryptOptions,
    calibration: Calibration | None,
    scores: ScoreProvider | None,
    counts: CountProvider | None,
) -> _Plan:
    with_data = calibration is not None
    importance = options.importance or ("activation" if with_data else "magnitude")
    allocation = options.allocation or ("sensitivity" if with_data else "balanced")
    targets = options.split.targets if isinstance(options.split, CalibratedLevels) else None
    check_options(importance, allocation, calibration, targets, scores, counts)
    return _Plan(importance, allocation)


def _walk(model: onnx.ModelProto, layers: Sequence[str]) -> _Walked:
    """Graph walk: every conv weight, the chosen ones read, the unmaskable left out."""
    model = _inline_conv_functions(model)
    inventory = walk_conv_weights(model)
    if not inventory.weights:
        detail = "; ".join(f"{u.node}: {u.reason}" for u in inventory.unsupported)
        raise UnsupportedModel(
            "no encryptable conv weights found" + (f" ({detail})" if detail else "")
        )
    chosen = filter_layers(inventory.weights, layers)
    arrays = {w.address: read_array(weight_tensor(model, w), None) for w in chosen}
    chosen, constant = unmaskable_weights(chosen, arrays)
    inventory = ConvInventory(inventory.weights, (*inventory.unsupported, *constant))
    if not chosen:
        raise UnsupportedModel(
            "no conv weight can be masked: "
            + "; ".join(f"{u.node}: {u.reason}" for u in inventory.unsupported)
        )
    for u in inventory.unsupported:
        warnings.warn(f"skipping {u.node}: {u.reason}", stacklevel=4)
    arrays = {w.address: arrays[w.address] for w in chosen}
    return _Walked(model, inventory, chosen, arrays, keep_originals(arrays))


def _score(
    walked: _Walked,
    plan: _Plan,
    calibration: Calibration | None,
    options: EncryptOptions,
    sub_seed: int,
    scores: ScoreProvider | None,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Importance: a score per kernel of every chosen weight."""
    if scores is None and plan.importance in DATA_DRIVEN_SCORERS:
        scores = _data_driven_scorer(
            plan.importance, calibration, options.objective, sub_seed, options.show_progress
        )
    if scores is not None:
        return dict(scores(walked.model, walked.chosen, walked.arrays))
    return {
        key: score_kernels(kernel_matrix(a), plan.importance, rng)
        for key, a in walked.arrays.items()
    }


def _allocate(
    walked: _Walked,
    plan: _Plan,
    calibration: Calibration | None,
    options: EncryptOptions,
    sub_seed: int,
    counts: CountProvider | None,
    layer_scores: Mapping[str, np.ndarray],
) -> tuple[dict[str, int], SensitivityAllocator | None]:
    """Budget allocation: how many kernels each chosen weight gives up."""
    sensitivity = None
    budget_weights = max(1, round(options.budget * walked.inventory.total_weights))
    if counts is None and plan.allocation == "sensitivity":
        assert calibration is not None
        sensitivity = SensitivityAllocator(
            calibration,
            objective=options.objective,
            masking=options.masking,
            seed=sub_seed,
            show_progress=options.show_progress,
        )
        counts = sensitivity
    chosen, arrays = walked.chosen, walked.arrays
    if counts is not None:
        layer_counts = dict(counts(walked.model, chosen, arrays, layer_scores, budget_weights))
        if sensitivity is not None:  # a hook of the caller's is what they asked for
            layer_counts = cap_layer_shares(layer_counts, chosen)
    elif plan.allocation == "uniform":
        layer_counts = allocate_uniform(chosen, options.budget)
    else:
        # The jitter's own generator: the public shapes and total must not replay it.
        jitter = np.random.default_rng([sub_seed, 1])
        layer_counts = allocate_balanced(chosen, budget_weights, jitter)
    return at_least_one_per_level(layer_counts, chosen, options.levels), sensitivity


def _select_and_mask(
    walked: _Walked,
    options: EncryptOptions,
    layer_scores: Mapping[str, np.ndarray],
    layer_counts: dict[str, int],
    calibration: Calibration | None,
    rng: np.random.Generator,
) -> tuple[Selection, list[MaskedLayer]]:
    """Selection and masking; a fixed split is checked to change the outputs at every
    level (``_liveness``), with more kernels where the chosen ones cannot."""
    model, chosen, arrays = walked.model, walked.chosen, walked.arrays
    by_address = walked.inventory.by_address()
    split = options.split
    check_live = isinstance(split, FixedLevels) and (
        sum(a.nbytes for a in arrays.values()) <= LIVENESS_BYTES
    )
    feeds = next(calibration.batches(16)) if calibration is not None and check_live else None
    for attempt in range(LIVENESS_ATTEMPTS):
        selection = select(
            layer_scores,
            layer_counts,
            levels=options.levels,
            fractions=options.fractions,
            order=split.order if isinstance(split, FixedLevels) else "most-important-first",
            total_weights=walked.inventory.total_weights,
            kernel_sizes={w.address: w.kernel_size for w in chosen},
        )
        masked = mask_selection(
            model, selection, arrays, by_address, rng, options.masking, options.show_progress
        )
        if not check_live:
            break
        selection, stuck = live_levels(model, by_address, selection, masked, feeds)
        if not stuck:
            break
        chosen_kernels = sum(len(layer.kernels) for layer in selection.layers)
        # Past LIVENESS_GROW kernels a level, a level whose kernels all change nothing is
        # the probe's limit (saturated outputs on random inputs), not dead channels.
        if (
            attempt == LIVENESS_ATTEMPTS - 1
            or chosen_kernels >= LIVENESS_GROW * options.levels
            or not grow_counts(layer_counts, chosen)
        ):
            warnings.warn(
                f"levels {', '.join(map(str, stuck))} give the same outputs as the level "
                "below on the probe inputs: their kernels feed channels nothing downstream "
                "uses; calibrated levels (CalibratedLevels with calibration inputs) measure "
                "each level",
                UserWarning,
                stacklevel=4,
            )
            break
        for layer in selection.layers:  # undo the masking, then try with more kernels
            write_array(weight_tensor(model, by_address[layer.address]), arrays[layer.address])
        warnings.warn(
            f"levels {', '.join(map(str, stuck))} changed nothing on the probe inputs "
            "(their kernels feed unused channels): encrypting twice as many kernels",
            LevelCountWarning,
            stacklevel=4,
        )
    return selection, masked


def _calibrate(
    walked: _Walked,
    selection: Selection,
    masked: Sequence[MaskedLayer],
    split: CalibratedLevels,
    objective: str,
    calibration: Calibration,
    sensitivity: SensitivityAllocator | None,
    sub_seed: int,
) -> tuple[Selection, LevelReport]:
    """Levels calibrated to targets: cuts searched on 75%, reported on the other 25%."""
    search, held_out = (
        calibration.split(0.25, seed=sub_seed) if calibration.n >= 8 else (calibration, None)
    )
    selection, report = calibrate_levels(
        walked.model,
        walked.inventory.by_address(),
        selection,
        masked,
        search,
        split.targets,
        held_out=held_out,
        objective=objective,
        layer_sensitivity={k: c.per_weight for k, c in sensitivity.curves.items()}
        if sensitivity is not None
        else None,
        metric=split.metric,
    )
    misses, held = report.misses(), report.held_out
    # Warn only past what the held-out sample's own noise explains.
    if misses is not None and held is not None and report.clearly_missed(TOLERANCE):
        worst = max(range(len(misses)), key=lambda m: abs(misses[m]))
        warnings.warn(
            f"level {worst + 1} reached {held[worst + 1]:.2f} on "
            f"{report.held_out_samples} held-out calibration inputs for a "
            f"target of {report.targets[worst]:.2f} (tolerance {TOLERANCE:.2f}, "
            f"sampling error {report.sampling_error():.2f}); more calibration "
            "samples (a few hundred) make the levels more reliable",
            LevelTargetWarning,
            stacklevel=4,
        )
    return selection, report


def _selection_params(
    plan: _Plan, options: EncryptOptions, level_report: LevelReport | None
) -> dict[str, object]:
    """The manifest's public ``selection`` entry: how the tiers were made, nothing that
    lets the per-layer counts be replayed from the public shapes (no allocation, budget
    or layer patterns) and never the seed (with the random scorer it would reveal which
    kernels are encrypted)."""
    split = options.split
    levels: dict[str, object]
    if level_report is not None:
        levels = {
            "split": "calibrated",
            "level_targets": list(level_report.targets),
            "level_quality": [round(q, 4) for q in level_report.calibration],
            "objective": level_report.objective,
        }
    else:
        order = split.order if isinstance(split, FixedLevels) else "most-important-first"
        levels = {"split": "fixed", "level_order": order}
    return {"importance": plan.importance, "masking": options.masking, **levels}


def _inline_conv_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline the model-local functions that hold convolutions (see ``_graph``)."""
    if not conv_functions(model):
        return model
    if model.ByteSize() >= PROTO_LIMIT:
        raise UnsupportedModel(
            "convolutions inside model-local functions of a model over 2 GB: inline them "
            "first (onnx.inliner.inline_local_functions) with external data"
        )
    return inline_conv_functions(model)


def _data_driven_scorer(
    importance: str, calibration: Calibration | None, objective: str, seed: int, show_progress: bool
) -> ScoreProvider:
    assert calibration is not None
    if importance == "activation":
        return activation_scorer(calibration)
    from onnx_selenc._select.pss import pss_scorer

    return pss_scorer(calibration, objective=objective, seed=seed, show_progress=show_progress)
