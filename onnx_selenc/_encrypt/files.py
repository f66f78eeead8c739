"""Encrypt a model file: inputs checked, the pipeline run, its output proven, files staged.

The stages themselves are in ``_pipeline`` (``encrypt_model``); this module owns what
touches files: refusing unsafe outputs, the self-check (``_verify``), and writing the
key, model and external data together (``_io.staged_outputs``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_selenc._crypto.keys import refuse_replacing_key_file, stage_key_file
from onnx_selenc._encrypt.options import (
    DATA_DRIVEN_SCORERS,
    IMPORTANCES,
    EncryptOptions,
    options_of,
)
from onnx_selenc._encrypt.pipeline import (
    CountProvider,
    EncryptedModel,
    ScoreProvider,
    encrypt_model,
)
from onnx_selenc._encrypt.stale import clear_stale_staging
from onnx_selenc._encrypt.verify import verify_encrypted, verify_written
from onnx_selenc._onnx.channels import WiringPlan
from onnx_selenc._onnx.files import (
    refuse_existing,
    refuse_existing_outputs,
    refuse_overwrite_of_input,
    same_file,
    staged_outputs,
)
from onnx_selenc._onnx.graph import (
    ConvInventory,
    UnsupportedConv,
    conv_functions,
)
from onnx_selenc._onnx.modelio import external_files, load_external_data, load_model, save_model
from onnx_selenc._onnx.modelio import with_conv_functions_inlined as _inline_conv_functions
from onnx_selenc._onnx.original import attach_record, record_original
from onnx_selenc._select.base import BaseReport
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.levels import LevelReport
from onnx_selenc._select.selection import (
    Selection,
)
from onnx_selenc.exceptions import ByteIdentityWarning

# The pipeline's names stay importable from here, where 0.1 had them.
__all__ = [
    "DATA_DRIVEN_SCORERS",
    "IMPORTANCES",
    "CountProvider",
    "EncryptResult",
    "EncryptedModel",
    "LayerReport",
    "ScoreProvider",
    "_inline_conv_functions",
    "encrypt",
    "encrypt_model",
]


@dataclass(frozen=True)
class LayerReport:
    """What was encrypted in one weight tensor (kept private: it is not in the manifest)."""

    address: str
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
    # Whether decrypt with the owner key gives back the plain file byte for byte, and
    # if not why (its weights come back bit for bit either way).
    byte_identical: bool = True
    byte_identity_problem: str | None = None
    # What chose the kernels (defaults resolved); kept out of the public manifest.
    importance: str = ""
    allocation: str = ""
    # With EncryptOptions(wiring=True): the layers wired, and why the others are not.
    wiring: WiringPlan | None = None
    # With EncryptOptions(base=...): the weights whose level 0 holds the base's kernels.
    base: BaseReport | None = None

    @property
    def fraction(self) -> float:
        return self.encrypted_weights / self.conv_weights if self.conv_weights else 0.0


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
        LeftoverWarning: a temporary folder of a killed earlier run for these outputs
            was kept (one provably dead, from SIGKILL before its commit, is removed).

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
    options = options_of(options, keywords, deprecated=True)
    model_path, output_path = Path(model_path), Path(output_path)
    data_path = output_path.with_name(output_path.name + ".data")
    refuse_existing(key_file, "key file")
    model = load_model(model_path, load_external=False)
    model_files = [model_path, *external_files(model, model_path.parent)]
    inputs = [*model_files, *_base_files(options.base)]
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
        how="pass overwrite=True to replace it; the tier keys handed out for it stop working",
    )
    for out in (output_path, data_path):
        refuse_replacing_key_file(out)
    # A run killed by SIGKILL before its commit left its staging folder (a complete owner
    # key, a partial model): removed when provably dead, else named in a warning.
    clear_stale_staging([key_file, output_path, data_path])
    external_data = options.external_data
    if external_data is None:
        external_data = len(model_files) > 1
    # How the plain file stores its tensors, for decrypt to give it back byte for byte
    # (read before its external data is loaded, which forgets that).
    restructured = None
    if conv_functions(model):
        restructured = "its convolutions in model-local functions are inlined"
    original = record_original(model, model_path, restructured=restructured)
    if not original.byte_identical:
        warnings.warn(
            f"decrypt will not give back {model_path.name} byte for byte: {original.problem} "
            "(the owner key still restores every weight bit for bit)",
            ByteIdentityWarning,
            stacklevel=2,
        )
    # Parsed once, above; its external data is read only now the outputs are checked.
    load_external_data(model, model_path)
    attach_record(model, original)
    enc = encrypt_model(model, options=options, calibration=calibration)
    checked = (
        verify_encrypted(
            enc.model, enc.owner_key, enc.selection, enc.masked, enc.inventory.by_address(),
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
        byte_identical=original.byte_identical,
        byte_identity_problem=original.problem,
        importance=enc.importance,
        allocation=enc.allocation,
        wiring=enc.wiring,
        base=enc.base,
    )


def _base_files(base: str | os.PathLike[str] | None) -> list[Path]:
    """The base model's files (never to be overwritten by an output)."""
    if base is None:
        return []
    header = load_model(base, load_external=False)
    return [Path(base), *external_files(header, Path(base).parent)]


def _layer_reports(
    selection: Selection, inventory: ConvInventory, levels: int
) -> tuple[LayerReport, ...]:
    by_address = inventory.by_address()
    return tuple(
        LayerReport(
            layer.address,
            by_address[layer.address].n_kernels,
            len(layer.kernels),
            tuple(int(np.count_nonzero(layer.restore_level == m)) for m in range(1, levels + 1)),
        )
        for layer in selection.layers
    )
