"""The encryption pipeline: graph walk -> importance -> selection -> masking -> sealing -> files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import _bundle, _seal
from ._activation import activation_scorer
from ._calibration import Calibration
from ._digest import model_digest
from ._graph import (
    ConvInventory,
    ConvWeight,
    UnsupportedConv,
    conv_functions,
    inline_conv_functions,
    walk_conv_weights,
)
from ._importance import DATA_FREE_SCORERS, score_kernels
from ._io import (
    refuse_existing,
    refuse_existing_outputs,
    refuse_overwrite_of_input,
    same_file,
    staged_outputs,
)
from ._keys import LevelKey, new_owner_key, refuse_replacing_key_file, stage_key_file
from ._levels import TOLERANCE, LevelReport, calibrate_levels
from ._liveness import live_levels
from ._masking import MaskedLayer, UnmaskableLayer, kernel_matrix, mask_layer
from ._modelio import PROTO_LIMIT, external_files, load_external_data, load_model, save_model
from ._options import CalibratedLevels, EncryptOptions, FixedLevels
from ._progress import progress
from ._selection import (
    ALLOCATIONS,
    Selection,
    allocate_balanced,
    allocate_uniform,
    filter_layers,
    select,
)
from ._sensitivity import SensitivityAllocator
from ._tensors import read_array, weight_tensor, write_array
from ._verify import keep_originals, verify_encrypted, verify_written
from .exceptions import LevelCountWarning, LevelTargetWarning, SelencError, UnsupportedModel

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
DATA_DRIVEN_SCORERS = ("activation", "pss")
# Up to this many bytes of encrypted weights the fixed level split is checked with
# forward passes (``_liveness``); past it a probe session's copy costs too much.
LIVENESS_BYTES = 512 << 20
LIVENESS_ATTEMPTS = 6  # at most 32x the budget's kernels before giving up with a warning
LIVENESS_GROW = 32  # ... and only while the levels hold fewer kernels than this each
IMPORTANCES = (*sorted(DATA_FREE_SCORERS), *DATA_DRIVEN_SCORERS)


@dataclass(frozen=True)
class LayerReport:
    """What was encrypted in one weight tensor (kept private: it is not in the manifest)."""

    key: str
    n_kernels: int
    encrypted_kernels: int
    kernels_per_level: tuple[int, ...]


@dataclass(frozen=True)
class EncryptResult:
    """Outcome of :func:`encrypt`."""

    model_files: tuple[Path, ...]
    key_file: Path
    key_id: str
    levels: int
    encrypted_weights: int
    conv_weights: int
    layers: tuple[LayerReport, ...]
    unsupported: tuple[UnsupportedConv, ...]
    level_report: LevelReport | None = None

    @property
    def fraction(self) -> float:
        return self.encrypted_weights / self.conv_weights if self.conv_weights else 0.0


@dataclass(frozen=True)
class EncryptedModel:
    """An encrypted model in memory, with its owner key (the output of the pipeline)."""

    model: onnx.ModelProto
    owner_key: LevelKey
    selection: Selection
    inventory: ConvInventory
    masked: tuple[MaskedLayer, ...]
    level_report: LevelReport | None = None
    # What the encrypted weights were before masking, by key, for the self-check: the
    # arrays themselves, or past ORIGINALS_IN_MEMORY bytes a checksum of each (_seal).
    originals: Mapping[str, np.ndarray | bytes] = field(default_factory=dict)


def encrypt(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    key_file: str | os.PathLike[str],
    options: EncryptOptions | None = None,
    calibration: Calibration | None = None,
    passphrase: str | None = None,
    overwrite: bool = False,
    **keywords: Any,
) -> EncryptResult:
    """Encrypt the most important conv kernels of an ONNX model into tiered levels.

    The output is a valid ONNX model that runs in plain ONNX Runtime with the
    selected kernels replaced by random values; it carries the sealed originals.
    ``key_file`` receives the owner (top-level) key; lower tiers come from
    :func:`onnx_selenc.export_key`.

    The key file, the model and its external data appear together as the last step,
    or not at all: an error, Ctrl-C or SIGTERM leaves no new file (and no temporary
    one) and, with ``overwrite``, the old model and data in place.

    Args:
        model_path: the plain model (external data beside it is read).
        output_path: where the encrypted model goes (never an input, never the key
            file); must not exist yet, nor ``<output>.data``, unless ``overwrite``.
        key_file: where the owner key goes; must not exist yet, even with
            ``overwrite`` (losing an owner key loses access to its model).
        options: how to encrypt (levels, budget, scorer, level split, masking, seed,
            external data, self-check, progress); default ``EncryptOptions()``.
        calibration: unlabelled inputs for the data-driven steps (activation or PSS
            importance, sensitivity allocation, ``CalibratedLevels``).
        passphrase: protect the owner key file with scrypt.
        overwrite: replace an existing model at ``output_path`` and its
            ``<output>.data`` (the tier keys handed out for it stop working). Never a
            key file.
        **keywords: 0.1's keyword arguments (``levels=``, ``budget=``,
            ``level_targets=``, ...), deprecated: they build the ``EncryptOptions``.

    Returns:
        What was written and what was encrypted.

    Warns:
        LevelTargetWarning: a level missed its target on the held-out inputs by more
            than the tolerance plus their sampling error.

    Raises:
        UnsupportedModel: no conv weight can be encrypted.
        FormatError: the input is not a valid ONNX model.
        FileExistsError: ``key_file`` exists, or an output does (unless
            ``overwrite``), or an output is a key file or a folder.
        SelfCheckFailed: the output failed the self-check (a bug; nothing is written).
        ValueError: bad arguments, or an output path that is an input or the key file.

    Example:
        >>> result = encrypt("model.onnx", "model.enc.onnx", key_file="owner.key",
        ...                  options=EncryptOptions(levels=5, budget=0.01))  # doctest: +SKIP
    """
    options = _options_of(options, keywords, deprecated=True)
    model_path, output_path = Path(model_path), Path(output_path)
    data_path = output_path.with_name(output_path.name + ".data")
    refuse_existing(key_file, "key file")
    model = load_model(model_path, load_external=False)
    inputs = [model_path, *external_files(model, model_path.parent)]
    for out in (output_path, data_path, key_file):
        refuse_overwrite_of_input(out, inputs)
    if same_file(output_path, key_file) or same_file(data_path, key_file):
        raise ValueError(
            f"the owner key file {key_file} would be overwritten by the encrypted model "
            f"({output_path} and its {data_path.name}): choose different paths"
        )
    refuse_existing_outputs(
        [output_path, data_path],
        overwrite=overwrite,
        how="pass --overwrite (overwrite=True) to replace it; "
        "the tier keys handed out for it stop working",
    )
    for out in (output_path, data_path):
        refuse_replacing_key_file(out)
    external_data = options.external_data
    if external_data is None:
        external_data = len(inputs) > 1
    # Parsed once, above; its external data is read only now the outputs are checked.
    load_external_data(model, model_path)
    enc = encrypt_model(model, options=options, calibration=calibration)
    checked = (
        verify_encrypted(
            enc.model, enc.owner_key, enc.selection, enc.masked, enc.inventory.by_key(),
            enc.originals, model_path,
        )
        if options.verify
        else None
    )  # fmt: skip
    # Written as checked: the self-check's serialised bytes are the file's (one encoding).
    serialised = checked.serialised if checked is not None and not external_data else None
    # The outputs appear together or not at all (_io.staged_outputs): all are written
    # under temporary names, then moved into place, the key first, then the data, then
    # the model. An error, Ctrl-C or SIGTERM at any point rolls the folders back as they
    # were. Only an uncatchable end (SIGKILL, power loss) between two moves can leave
    # part of the set, and this order makes that part an owner key without its model
    # (it blocks a retry; nothing is lost), never a model, or a replaced one, whose key
    # was never written.
    with staged_outputs() as stage:
        key_path = stage_key_file(stage, key_file, enc.owner_key, passphrase=passphrase)
        written = save_model(
            enc.model,
            output_path,
            external_data=external_data,
            protect=inputs,
            replace=overwrite,
            stage=stage,
            serialised=serialised,
        )
        if checked is not None and serialised is None:
            # Written otherwise than as checked (external data, or past 2 GB): the files,
            # still under temporary names, must be the model the check restored. The
            # in-memory model is done with: freed first (a 2 GB model is read again).
            enc.model.Clear()
            del model
            verify_written(
                stage.path(output_path),
                enc.owner_key,
                public_session=not checked.public_session,
                plain=model_path,
            )
    return EncryptResult(
        model_files=tuple(written),
        key_file=key_path,
        key_id=enc.owner_key.key_id,
        levels=options.levels,
        encrypted_weights=enc.selection.selected_weights,
        conv_weights=enc.inventory.total_weights,
        layers=_layer_reports(enc.selection, enc.inventory, options.levels),
        unsupported=enc.inventory.unsupported,
        level_report=enc.level_report,
    )


def encrypt_model(  # noqa: C901
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

    ``scores``/``counts`` replace the built-in scorers and allocators (research
    hooks); ``owner_key`` re-uses a key (tests, re-encryption). The model is
    modified in place and returned inside the result. ``keywords`` build the options
    as 0.1's arguments did (``levels=``, ``budget=``, ...).
    """
    if _bundle.is_encrypted(model):
        raise SelencError("this model is already encrypted by onnx-selenc")
    options = _options_of(options, keywords, deprecated=False)
    levels, budget, masking, seed = options.levels, options.budget, options.masking, options.seed
    objective, layers, show_progress = options.objective, options.layers, options.show_progress
    split = options.split
    level_targets = split.targets if isinstance(split, CalibratedLevels) else None
    level_metric = split.metric if isinstance(split, CalibratedLevels) else None
    level_order = split.order if isinstance(split, FixedLevels) else "most-important-first"
    fractions = options.fractions
    importance = options.importance or ("activation" if calibration is not None else "magnitude")
    allocation = options.allocation or ("sensitivity" if calibration is not None else "balanced")
    _check_options(importance, allocation, calibration, level_targets, scores, counts)

    model = _inline_conv_functions(model)
    inventory = walk_conv_weights(model)
    if not inventory.weights:
        detail = "; ".join(f"{u.node}: {u.reason}" for u in inventory.unsupported)
        raise UnsupportedModel(
            "no encryptable conv weights found" + (f" ({detail})" if detail else "")
        )
    chosen = filter_layers(inventory.weights, layers)
    arrays = {w.key: read_array(weight_tensor(model, w), None) for w in chosen}
    chosen, constant = _drop_constant_layers(chosen, arrays)
    inventory = ConvInventory(inventory.weights, (*inventory.unsupported, *constant))
    if not chosen:
        raise UnsupportedModel(
            "no conv weight can be masked: "
            + "; ".join(f"{u.node}: {u.reason}" for u in inventory.unsupported)
        )
    for u in inventory.unsupported:
        warnings.warn(f"skipping {u.node}: {u.reason}", stacklevel=2)
    arrays = {w.key: arrays[w.key] for w in chosen}
    originals = keep_originals(arrays)
    rng = np.random.default_rng(seed)
    sub_seed = int(rng.integers(2**31))

    # importance
    if scores is None and importance in DATA_DRIVEN_SCORERS:
        scores = _data_driven_scorer(importance, calibration, objective, sub_seed, show_progress)
    if scores is not None:
        layer_scores = dict(scores(model, chosen, arrays))
    else:
        layer_scores = {
            key: score_kernels(kernel_matrix(a), importance, rng) for key, a in arrays.items()
        }
    # selection
    sensitivity = None
    budget_weights = max(1, round(budget * inventory.total_weights))
    if counts is None and allocation == "sensitivity":
        assert calibration is not None
        sensitivity = SensitivityAllocator(
            calibration,
            objective=objective,
            masking=masking,
            seed=sub_seed,
            show_progress=show_progress,
        )
        counts = sensitivity
    if counts is not None:
        layer_counts = dict(counts(model, chosen, arrays, layer_scores, budget_weights))
    elif allocation == "uniform":
        layer_counts = allocate_uniform(chosen, budget)
    else:
        layer_counts = allocate_balanced(chosen, budget_weights)
    layer_counts = _at_least_one_per_level(layer_counts, chosen, levels)
    by_key = inventory.by_key()
    kernel_sizes = {w.key: w.kernel_size for w in chosen}
    check_live = level_targets is None and sum(a.nbytes for a in arrays.values()) <= LIVENESS_BYTES
    feeds = next(calibration.batches(16)) if calibration is not None and check_live else None
    for attempt in range(LIVENESS_ATTEMPTS):
        selection = select(
            layer_scores,
            layer_counts,
            levels=levels,
            fractions=fractions,
            order=level_order,
            total_weights=inventory.total_weights,
            kernel_sizes=kernel_sizes,
        )
        masked = _mask(model, selection, arrays, by_key, rng, masking, show_progress)
        if not check_live:
            break
        # The fixed split, checked to change the outputs at every level (_liveness).
        selection, stuck = live_levels(model, by_key, selection, masked, feeds)
        if not stuck:
            break
        chosen_kernels = sum(len(layer.kernels) for layer in selection.layers)
        # Past LIVENESS_GROW kernels a level, a level whose kernels all change nothing is
        # the probe's limit (saturated outputs on random inputs), not dead channels.
        if (
            attempt == LIVENESS_ATTEMPTS - 1
            or chosen_kernels >= LIVENESS_GROW * levels
            or not _grow(layer_counts, chosen)
        ):
            warnings.warn(
                f"levels {', '.join(map(str, stuck))} give the same outputs as the level "
                "below on the probe inputs: their kernels feed channels nothing downstream "
                "uses; calibrated levels (level_targets with calibration inputs) measure "
                "each level",
                UserWarning,
                stacklevel=2,
            )
            break
        for layer in selection.layers:  # undo the masking, then try with more kernels
            write_array(weight_tensor(model, by_key[layer.key]), arrays[layer.key])
        warnings.warn(
            f"levels {', '.join(map(str, stuck))} changed nothing on the probe inputs "
            "(their kernels feed unused channels): encrypting twice as many kernels",
            LevelCountWarning,
            stacklevel=2,
        )
    level_report = None
    if level_targets is not None:
        assert calibration is not None
        search, held_out = (
            calibration.split(0.25, seed=sub_seed) if calibration.n >= 8 else (calibration, None)
        )
        selection, level_report = calibrate_levels(
            model,
            by_key,
            selection,
            masked,
            search,
            level_targets,
            held_out=held_out,
            objective=objective,
            layer_sensitivity={k: c.per_weight for k, c in sensitivity.curves.items()}
            if sensitivity is not None
            else None,
            metric=level_metric,
        )
        misses, held = level_report.misses(), level_report.held_out
        # Warn only past what the held-out sample's own noise explains.
        if misses is not None and held is not None and level_report.clearly_missed(TOLERANCE):
            worst = max(range(len(misses)), key=lambda m: abs(misses[m]))
            warnings.warn(
                f"level {worst + 1} reached {held[worst + 1]:.2f} on "
                f"{level_report.held_out_samples} held-out calibration inputs for a "
                f"target of {level_report.targets[worst]:.2f} (tolerance {TOLERANCE:.2f}, "
                f"sampling error {level_report.sampling_error():.2f}); more calibration "
                "samples (a few hundred) make the levels more reliable",
                LevelTargetWarning,
                stacklevel=2,
            )
    # sealing
    owner = owner_key or new_owner_key(levels)
    if owner.level != levels or owner.levels != levels:
        raise ValueError("the owner key must be a top-level key for the same number of levels")
    manifest_raw, blobs = _seal_levels(
        model,
        selection,
        masked,
        by_key,
        inventory,
        owner,
        {
            "importance": importance,
            "allocation": allocation,
            "budget": budget,
            "masking": masking,
            "layers": list(layers or []),
            **(
                {
                    "level_targets": list(level_report.targets),
                    "level_quality": [round(q, 4) for q in level_report.calibration],
                    "objective": level_report.objective,
                }
                if level_report
                else {"level_order": level_order, "level_fractions": list(fractions)}
            ),
        },
    )
    _bundle.attach(model, manifest_raw, blobs)
    return EncryptedModel(
        model, owner, selection, inventory, tuple(masked), level_report, originals=originals
    )


def _mask(
    model: onnx.ModelProto,
    selection: Selection,
    arrays: Mapping[str, np.ndarray],
    by_key: Mapping[str, ConvWeight],
    rng: np.random.Generator,
    masking: str,
    show_progress: bool,
) -> list[MaskedLayer]:
    """Replace the selected kernels in ``model`` by DPRM draws; return what was replaced."""
    masked = []
    for layer in progress(selection.layers, desc="masking", enabled=show_progress):
        try:
            new_values, record = mask_layer(
                layer.key, arrays[layer.key], layer.kernels, rng, masking
            )
        except UnmaskableLayer as exc:  # all-equal weights are left out above: say which
            raise UnsupportedModel(f"weight {layer.key!r} cannot be masked: {exc}") from None
        write_array(weight_tensor(model, by_key[layer.key]), new_values)
        masked.append(record)
    return masked


def _grow(counts: dict[str, int], chosen: Sequence[ConvWeight]) -> bool:
    """Double every layer's kernel count (within its size); False if none can grow."""
    grown = False
    for w in chosen:
        now = counts.get(w.key, 0)
        new = min(w.n_kernels, max(1, 2 * now)) if now else 0
        grown = grown or new > now
        counts[w.key] = new
    return grown


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


def _drop_constant_layers(
    chosen: Sequence[ConvWeight], arrays: Mapping[str, np.ndarray]
) -> tuple[list[ConvWeight], list[UnsupportedConv]]:
    """Leave out weights whose values are all equal: no random replacement of such a
    kernel can both differ from the original and keep the layer's distribution."""
    kept, dropped = [], []
    for w in chosen:
        a = arrays[w.key]
        if a.size and bool(np.all(a == a.flat[0])):
            dropped.append(
                UnsupportedConv(
                    ", ".join(w.consumers),
                    w.graph_path,
                    f"every value of weight '{w.name}' is {a.flat[0]!r}: a replacement would "
                    "equal the original or stand out, so it is not encrypted",
                )
            )
        else:
            kept.append(w)
    return kept, dropped


def _at_least_one_per_level(
    counts: Mapping[str, int], chosen: Sequence[ConvWeight], levels: int
) -> dict[str, int]:
    """Raise the kernel counts so each of the ``levels`` levels restores one kernel.

    With fewer encrypted kernels than levels, two tier keys would be equal (or a tier
    key equal to the owner's); the largest layers give the extra kernels, with a warning.
    """
    out = {k: int(v) for k, v in counts.items()}
    short = levels - sum(out.values())
    if short <= 0:
        return out
    room = sorted(chosen, key=lambda w: w.n_kernels - out.get(w.key, 0), reverse=True)
    available = sum(w.n_kernels - out.get(w.key, 0) for w in room)
    if available < short:
        raise ValueError(
            f"{levels} distinct levels need at least {levels} encrypted kernels, and the "
            f"chosen conv weights hold only {sum(out.values()) + available}: use fewer levels"
        )
    before = sum(out.values())
    while short > 0:
        for w in room:
            if short and out.get(w.key, 0) < w.n_kernels:
                out[w.key] = out.get(w.key, 0) + 1
                short -= 1
    warnings.warn(
        f"the budget selects {before} kernels for {levels} levels; encrypting {levels} "
        "so that every level restores at least one kernel more than the one below",
        LevelCountWarning,
        stacklevel=3,
    )
    return out


def _options_of(
    options: EncryptOptions | None, keywords: dict[str, Any], *, deprecated: bool
) -> EncryptOptions:
    """The options given, or those 0.1's keyword arguments describe (not both)."""
    if not keywords:
        return options if options is not None else EncryptOptions()
    if options is not None:
        raise TypeError(f"give options= or keyword options, not both ({', '.join(keywords)})")
    if deprecated:
        warnings.warn(
            "encrypt(levels=..., budget=..., ...) is deprecated: pass "
            "options=EncryptOptions(...) (keyword options go in 0.3)",
            DeprecationWarning,
            stacklevel=3,
        )
    return EncryptOptions.from_keywords(**keywords)


def _check_options(
    importance: str,
    allocation: str,
    calibration: Calibration | None,
    level_targets: Sequence[float] | None,
    scores: ScoreProvider | None,
    counts: CountProvider | None,
) -> None:
    if scores is None and importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r} (known: {', '.join(IMPORTANCES)})")
    if counts is None and allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r} (known: {', '.join(ALLOCATIONS)})")
    needs = [
        what
        for what, needed in (
            (f"importance {importance!r}", scores is None and importance in DATA_DRIVEN_SCORERS),
            ("allocation 'sensitivity'", counts is None and allocation == "sensitivity"),
            ("level targets", level_targets is not None),
        )
        if needed
    ]
    if needs and calibration is None:
        raise ValueError(
            f"{' and '.join(needs)} need calibration inputs (calibration=Calibration(...))"
        )


def _data_driven_scorer(
    importance: str, calibration: Calibration | None, objective: str, seed: int, show_progress: bool
) -> ScoreProvider:
    assert calibration is not None
    if importance == "activation":
        return activation_scorer(calibration)
    from ._pss import pss_scorer

    return pss_scorer(calibration, objective=objective, seed=seed, show_progress=show_progress)


def _seal_levels(
    model: onnx.ModelProto,
    selection: Selection,
    masked: Sequence[MaskedLayer],
    by_key: Mapping[str, ConvWeight],
    inventory: ConvInventory,
    owner: LevelKey,
    selection_params: dict[str, object],
) -> tuple[bytes, list[bytes]]:
    """Build the manifest and seal each level's increment of originals."""
    levels = selection.levels
    payloads = [
        _bundle.encode_payload(_level_patches(selection, masked, by_key, m))
        for m in range(1, levels + 1)
    ]
    weights_per_level = [
        sum(
            int(np.count_nonzero(layer.restore_level == m)) * by_key[layer.key].kernel_size
            for layer in selection.layers
        )
        for m in range(1, levels + 1)
    ]
    lengths = [_seal.SEAL_OVERHEAD] + [len(p) + _seal.SEAL_OVERHEAD for p in payloads]
    level_keys = [owner.derive(m).material for m in range(levels + 1)]
    taggers = [_seal.new_model_tagger(k) for k in level_keys]
    digest = model_digest(model, None, exclude_metadata=_bundle.BUNDLE_KEYS, taggers=taggers)
    manifest_raw = _bundle.manifest_bytes(
        {
            "key_id": owner.key_id,
            "levels": levels,
            "model_digest": digest,
            "model_tags": [t.result() for t in taggers],
            "blobs": _bundle.blob_layout(lengths),
            "encrypted": {
                "weights": selection.selected_weights,
                "conv_weights": inventory.total_weights,
                "layers": len(selection.layers),
                "fraction": round(selection.fraction, 8),
            },
            "level_weights": [0, *np.cumsum(weights_per_level).tolist()],
            # The seed is deliberately absent: with the random scorer it would reveal
            # which kernels are encrypted.
            "selection": selection_params,
            "tool": f"onnx-selenc {_version()}",
        }
    )
    blobs = [_seal.seal(level_keys[0], b"", _bundle.blob_aad(manifest_raw, 0))]
    for m, payload in enumerate(payloads, start=1):
        blobs.append(_seal.seal(level_keys[m], payload, _bundle.blob_aad(manifest_raw, m)))
    return manifest_raw, blobs


def _level_patches(
    selection: Selection,
    masked: Sequence[MaskedLayer],
    by_key: Mapping[str, ConvWeight],
    level: int,
) -> list[_bundle.TensorPatch]:
    patches = []
    for layer, record in zip(selection.layers, masked, strict=True):
        here = layer.restore_level == level
        if here.any():
            w = by_key[layer.key]
            patches.append(
                _bundle.TensorPatch(
                    layer.key, w.dtype, w.shape, record.kernels[here], record.originals[here]
                )
            )
    return patches


def _layer_reports(
    selection: Selection, inventory: ConvInventory, levels: int
) -> tuple[LayerReport, ...]:
    by_key = inventory.by_key()
    return tuple(
        LayerReport(
            layer.key,
            by_key[layer.key].n_kernels,
            len(layer.kernels),
            tuple(int(np.count_nonzero(layer.restore_level == m)) for m in range(1, levels + 1)),
        )
        for layer in selection.layers
    )


def _version() -> str:
    from . import __version__

    return __version__
