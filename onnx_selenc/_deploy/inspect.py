"""Inspection: the conv inventory of any model, and the public manifest of an encrypted one."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._load.loader import resolve_model_path
from onnx_selenc._onnx.graph import (
    ConvWeight,
    UnsupportedConv,
    conv_functions,
    inline_conv_functions,
    walk_conv_weights,
)
from onnx_selenc._onnx.modelio import load_model


@dataclass(frozen=True)
class ModelReport:
    """What ``inspect`` shows: conv weights, refusals, and the manifest if encrypted."""

    path: Path
    producer: str
    opsets: dict[str, int]
    weights: tuple[ConvWeight, ...]
    unsupported: tuple[UnsupportedConv, ...]
    manifest: dict[str, object] | None
    # ``domain:name`` of the local functions holding convolutions: the inventory is that
    # of the model with them inlined, as ``encrypt`` sees it.
    inlined_functions: tuple[str, ...] = ()

    @property
    def conv_weights(self) -> int:
        return sum(w.n_weights for w in self.weights)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "producer": self.producer,
            "opsets": self.opsets,
            "encrypted": self.manifest is not None,
            "conv_weights": self.conv_weights,
            "weights": [
                {**asdict(w), "kernels": w.n_kernels, "params": w.n_weights} for w in self.weights
            ],
            "unsupported": [asdict(u) for u in self.unsupported],
            "inlined_functions": list(self.inlined_functions),
            "manifest": self.manifest,
        }


def inspect_model(model_path: str | os.PathLike[str]) -> ModelReport:
    """Describe a model without any key: where each conv weight lives, and the manifest.

    The manifest is public: levels, key id, how many weights each level restores.
    Which tensors and kernels are encrypted is sealed and not shown.

    Raises:
        FormatError: not a valid ONNX model or a malformed manifest.
    """
    path = resolve_model_path(model_path)
    model = load_model(path, load_external=False)
    functions = tuple(f"{d}:{n}" for d, n in conv_functions(model))
    inventory = walk_conv_weights(inline_conv_functions(model))
    manifest = None
    if _bundle.is_encrypted(model):
        manifest = _bundle.read_bundle(model)[0].as_dict()
    producer = f"{model.producer_name} {model.producer_version}".strip()
    opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
    return ModelReport(
        path, producer, opsets, inventory.weights, inventory.unsupported, manifest, functions
    )


def format_report(report: ModelReport) -> str:
    """A human-readable table of a :class:`ModelReport`."""
    lines = [f"model: {report.path}"]
    if report.producer:  # name and version; many exporters leave both empty
        lines.append(f"producer: {report.producer}")
    lines.append("opsets: " + ", ".join(f"{k} {v}" for k, v in report.opsets.items()))
    header = (
        f"{'weight':<48} {'where':<12} {'dtype':<8} {'shape':<20} {'kernels':>9} {'params':>10}"
    )
    lines += ["", header, "-" * len(header)]
    for w in report.weights:
        where = w.storage + ("+ext" if w.external else "")
        if w.graph_path:
            where += "+sub"
        name = w.address if len(w.address) <= 48 else "…" + w.address[-47:]
        lines.append(
            f"{name:<48} {where:<12} {w.dtype:<8} {'x'.join(map(str, w.shape)):<20} "
            f"{w.n_kernels:>9} {w.n_weights:>10}"
        )
    lines.append(f"{len(report.weights)} conv weights, {report.conv_weights} parameters")
    for u in report.unsupported:
        lines.append(f"not encryptable: {u.node}: {u.reason}")
    if report.inlined_functions:
        lines.append(
            "convolutions inside local functions, listed as encrypt inlines them: "
            + ", ".join(report.inlined_functions)
        )
    m = report.manifest
    if m is None:
        return "\n".join(lines)
    enc, selection, lw = m["encrypted"], m["selection"], m["level_weights"]
    assert isinstance(enc, dict) and isinstance(selection, dict) and isinstance(lw, list)
    lines += [
        "",
        f"encrypted by {m.get('tool') or 'onnx-selenc'}",
        f"  key id: {m['key_id']}",
        f"  levels: {m['levels']}  ({m['cipher']}, {m['chain']})",
        f"  encrypted: {enc['weights']} of {enc['conv_weights']} conv weights "
        f"({100 * float(enc['fraction']):.3f}%)"
        + (f" in {enc['layers']} tensors" if "layers" in enc else ""),
    ]
    # One "name: value" line per setting (a dict repr is no read for a person).
    shown = dict(selection)
    split = shown.pop("split", None)
    order = shown.pop("level_order", None)
    targets = shown.pop("level_targets", None)
    quality = shown.pop("level_quality", None)
    objective = shown.pop("objective", None)
    wiring = shown.pop("wiring", None)
    for name in ("importance", "masking"):
        if name in shown:
            lines.append(f"  {name}: {shown.pop(name)}")
    if split == "calibrated" or targets is not None:
        lines.append(
            "  levels split: calibrated to quality targets"
            + (f" (objective: {objective})" if objective else "")
        )
    elif split is not None or order is not None:
        lines.append(
            f"  levels split: {split or 'fixed'}"
            + (f" ({str(order).replace('-', ' ')})" if order else "")
        )
    lines += _wiring_lines(wiring)
    for name, value in shown.items():  # what older manifests (format 1) stated besides
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        lines.append(f"  {name.replace('_', ' ')}: {text}")
    for level, restored in enumerate(lw):
        line = f"  level {level}: restores {restored} weights"
        if isinstance(targets, list) and 0 < level <= len(targets):
            line += f", target {float(targets[level - 1]):.2f}"
        if isinstance(quality, list) and level < len(quality):
            line += f", quality {float(quality[level]):.3f} on calibration inputs"
        lines.append(line)
    return "\n".join(lines)


def _wiring_lines(wiring: object) -> list[str]:
    """Which layers are wired (never how: the order is sealed with level 1)."""
    if not isinstance(wiring, list):
        return []
    names = ": " + ", ".join(map(str, wiring)) if wiring else ""
    return [
        f"  wiring: {len(wiring)} convs' output channels in a secret order until level 1{names}"
    ]
