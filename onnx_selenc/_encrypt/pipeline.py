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
from onnx_selenc._encrypt.sealing import seal_levels, selection_params
from onnx_selenc._encrypt.verify import keep_originals
from onnx_selenc._encrypt.wiring import rescore_level_zero, wire_model
from onnx_selenc._onnx.channels import WiringPlan
from onnx_selenc._onnx.graph import (
    ConvInventory,
    ConvWeight,
    walk_conv_weights,
)
from onnx_selenc._onnx.modelio import with_conv_functions_inlined
from onnx_selenc._onnx.tensors import read_array, weight_tensor
from onnx_selenc._select.activation import activation_scorer
from onnx_selenc._select.allocation import cap_layer_shares
from onnx_selenc._select.base import (
    BaseReport,
    TakenTensor,
    base_counts,
    load_base,
    take_from_base,
)
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.importance import score_kernels
from onnx_selenc._select.levels import (
    TOLERANCE,
    LevelReport,
    break_level_zero,
    calibrate_levels,
)
from onnx_selenc._select.liveness import select_live
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
    select,
)
from onnx_selenc._select.sensitivity import SensitivityAllocator
from onnx_selenc.exceptions import (
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
    wiring: WiringPlan | None = None  # with EncryptOptions(wiring=True)
    base: BaseReport | None = None  # with EncryptOptions(base=...)


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
    base = None if options.base is None else load_base(options.base, walked.chosen)
    differing = base.differing(walked.arrays) if base is not None else {}
    rng = np.random.default_rng(options.seed)
    sub_seed = int(rng.integers(2**31))
    layer_scores = _score(walked, plan, calibration, options, sub_seed, scores, rng)
    # With a base, every kernel unlike the base's is encrypted, most important first.
    by_address = walked.inventory.by_address()
    missing = {a: by_address[a].n_kernels for a, _ in base.missing} if base is not None else {}
    fixed = base_counts(layer_scores, differing, missing)
    layer_counts, sensitivity = _allocate(
        walked, plan, calibration, options, sub_seed, counts, layer_scores, fixed
    )
    selection, masked = _select_and_mask(
        walked, options, layer_scores, layer_counts, calibration, rng,
        base.counterparts if base is not None else None,
    )  # fmt: skip
    level_report = None
    if isinstance(options.split, CalibratedLevels):
        assert calibration is not None
        if base is None:  # with a base, level 0 is the base's kernels: no draw to redo
            masked = _break_level_zero(
                walked, selection, masked, options, options.split, calibration, sub_seed, rng
            )
        selection, level_report = _calibrate(
            walked, selection, masked, options.split, options.objective, calibration,
            sensitivity, sub_seed,
        )  # fmt: skip
    owner = owner_key or new_owner_key(options.levels)
    if owner.level != options.levels or owner.levels != options.levels:
        raise ValueError("the owner key must be a top-level key for the same number of levels")
    # Wired, or a base's other tensors taken, last: the levels above are measured and
    # sealed as the model is; both change level 0 only (and come back at level 1).
    wiring: WiringPlan | None = None
    level_one: list[_bundle.TensorPatch] = []
    originals = walked.originals
    taken: list[TakenTensor] = []
    if options.wiring:
        wiring, level_one, originals = wire_model(
            walked.model, walked.inventory, walked.originals, sub_seed
        )
    elif base is not None:
        taken = take_from_base(walked.model, set(by_address), base, rng)
        level_one = [_taken_patch(t) for t in taken]
        originals = {**originals, **{t.address: t.original for t in taken}}
    if level_report is not None and (wiring is not None or taken):
        assert calibration is not None and isinstance(options.split, CalibratedLevels)
        level_report = rescore_level_zero(
            walked.model, walked.inventory, originals, level_report,
            *_calibration_parts(calibration, sub_seed), options.split.metric,
        )  # fmt: skip
    params = selection_params(plan.importance, options, level_report, wiring)
    manifest_raw, blobs, signature = seal_levels(
        walked.model,
        selection,
        masked,
        walked.inventory.by_address(),
        walked.inventory,
        owner,
        params,
        level_one,
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
        originals=originals,
        wiring=wiring,
        base=base.report(differing, taken) if base is not None else None,
    )


def _taken_patch(taken: TakenTensor) -> _bundle.TensorPatch:
    """Level 1's patch of a tensor whose level-0 values a base gave."""
    values = kernel_matrix(taken.original)[taken.kernels]
    return _bundle.TensorPatch(
        taken.address, taken.original.dtype.name, taken.original.shape, taken.kernels, values
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
    model = with_conv_functions_inlined(model)
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
    fixed: Mapping[str, int],
) -> tuple[dict[str, int], SensitivityAllocator | None]:
    """Budget allocation: how many kernels each chosen weight gives up (``fixed``: the
    counts a base decides, kept as they are)."""
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
    layer_counts.update(fixed)
    return at_least_one_per_level(layer_counts, chosen, options.levels), sensitivity


def _select_and_mask(
    walked: _Walked,
    options: EncryptOptions,
    layer_scores: Mapping[str, np.ndarray],
    layer_counts: dict[str, int],
    calibration: Calibration | None,
    rng: np.random.Generator,
    base: Mapping[str, np.ndarray] | None = None,
) -> tuple[Selection, list[MaskedLayer]]:
    """Selection and masking; a fixed split is checked to change the outputs at every
    level (``_liveness``), with more kernels where the chosen ones cannot if the options
    allow it (else ``BudgetTooSmall``)."""
    model, chosen, arrays = walked.model, walked.chosen, walked.arrays
    by_address = walked.inventory.by_address()
    split = options.split
    check_live = isinstance(split, FixedLevels) and (
        sum(a.nbytes for a in arrays.values()) <= LIVENESS_BYTES
    )
    feeds = next(calibration.batches(16)) if calibration is not None and check_live else None

    def attempt(counts: Mapping[str, int]) -> tuple[Selection, list[MaskedLayer]]:
        selection = select(
            layer_scores,
            counts,
            levels=options.levels,
            fractions=options.fractions,
            order=split.order if isinstance(split, FixedLevels) else "most-important-first",
            total_weights=walked.inventory.total_weights,
            kernel_sizes={w.address: w.kernel_size for w in chosen},
        )
        masked = mask_selection(
            model, selection, arrays, by_address, rng, options.masking, options.show_progress,
            base,
        )  # fmt: skip
        return selection, masked

    if not check_live:
        return attempt(layer_counts)
    return select_live(
        model, by_address, arrays, layer_counts, attempt, feeds,
        levels=options.levels, allow_growth=options.allow_budget_growth,
    )  # fmt: skip


def _break_level_zero(
    walked: _Walked,
    selection: Selection,
    masked: list[MaskedLayer],
    options: EncryptOptions,
    split: CalibratedLevels,
    calibration: Calibration,
    sub_seed: int,
    rng: np.random.Generator,
) -> list[MaskedLayer]:
    """A masking draw (same kernels) that leaves level 0 below the first target
    (``levels.break_level_zero``), measured on the inputs the level search uses."""
    search, _ = _calibration_parts(calibration, sub_seed)
    return break_level_zero(
        walked.model, walked.inventory.by_address(), walked.arrays, selection, masked,
        search, split.targets[0], rng, masking=options.masking,
        objective=options.objective, metric=split.metric,
    )  # fmt: skip


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
    search, held_out = _calibration_parts(calibration, sub_seed)
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
    # Misses only past what the held-out sample's own noise explains; flat levels always.
    for message in report.problems(TOLERANCE):
        warnings.warn(message, LevelTargetWarning, stacklevel=4)
    return selection, report


def _calibration_parts(
    calibration: Calibration, sub_seed: int
) -> tuple[Calibration, Calibration | None]:
    """The calibration inputs the cuts are searched on, and the quarter held out."""
    if calibration.n < 8:
        return calibration, None
    return calibration.split(0.25, seed=sub_seed)


def _data_driven_scorer(
    importance: str, calibration: Calibration | None, objective: str, seed: int, show_progress: bool
) -> ScoreProvider:
    assert calibration is not None
    if importance == "activation":
        return activation_scorer(calibration)
    from onnx_selenc._select.pss import pss_scorer

    return pss_scorer(calibration, objective=objective, seed=seed, show_progress=show_progress)
