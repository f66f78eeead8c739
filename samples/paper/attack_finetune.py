"""The fine-tuning attack on the encrypted VGG19 sample (:mod:`samples.paper.attacks`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samples.paper import _common, vgg19

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning attack's budget (identical for every arm).

    Attributes:
        fractions: shares of the 8,000 training digits the attacker holds.
        steps: Adam steps per arm.
        batch: digits per step.
        lr: Adam learning rate (the one the model was trained with).
        seed: subset choice, initialisation of the scratch arm and shuffling.
    """

    fractions: tuple[float, ...] = (0.01, 0.10)
    steps: int = 150
    batch: int = 32
    lr: float = 1e-4
    seed: int = 0


def smoke_finetune() -> FinetuneConfig:
    """Two steps per arm, 1% of the digits only: exercises the attack code on the smoke model."""
    return FinetuneConfig(fractions=(0.01,), steps=2)


# ------------------------------------------------------------ fine-tuning attack


def onnx_to_state_dict(path: Path, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map an ONNX file's weights onto a PyTorch module by graph order and shape.

    Conv nodes are matched with ``nn.Conv2d`` modules and Gemm/MatMul nodes with
    ``nn.Linear`` modules, in order; initializer names are not trusted (an encrypted or
    re-exported file may rename them). Gemm weights are transposed unless ``transB=1``.

    Args:
        path: the ONNX model (e.g. an encrypted file: its masked weights are read as is).
        module: the architecture to fill.

    Returns:
        A state dict for ``module.load_state_dict``.

    Raises:
        ValueError: the graph and the module do not line up.
    """
    import onnx
    import torch
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    onnx_layers: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        bias = inits.get(node.input[2]) if len(node.input) > 2 else None
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            w = w if attrs.get("transB", 0) else w.T
        elif node.op_type == "MatMul":
            w = w.T  # x @ W with W (in, out); torch stores (out, in)
        onnx_layers.append(("conv" if node.op_type == "Conv" else "linear", w, bias))
    torch_layers = [
        (name, "conv" if isinstance(m, torch.nn.Conv2d) else "linear", m)
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    if len(onnx_layers) != len(torch_layers):
        raise ValueError(f"{len(onnx_layers)} weighted ONNX nodes vs {len(torch_layers)} modules")
    state: dict[str, torch.Tensor] = {}
    for (kind, w, b), (name, tkind, m) in zip(onnx_layers, torch_layers, strict=True):
        if kind != tkind or tuple(w.shape) != tuple(m.weight.shape):
            raise ValueError(
                f"{name}: ONNX {kind} {w.shape} vs torch {tkind} {tuple(m.weight.shape)}"
            )
        state[f"{name}.weight"] = torch.from_numpy(np.array(w, dtype=np.float32))
        if m.bias is not None:
            if b is None or b.shape != tuple(m.bias.shape):
                raise ValueError(f"{name}: bias missing or mis-shaped in the ONNX graph")
            state[f"{name}.bias"] = torch.from_numpy(np.array(b, dtype=np.float32))
    return state


def vgg_from_onnx(path: Path) -> torch.nn.Module:
    """A PyTorch VGG19 holding an ONNX file's weights (eval mode)."""
    model = vgg19.build_model()
    model.load_state_dict(onnx_to_state_dict(path, model))
    return model.eval()


def finetune_attack(
    plain: Path,
    encrypted: Path,
    data: vgg19.Data,
    config: FinetuneConfig,
    *,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the level-0 VGG19 on a few digits; compare with scratch and plain arms.

    Args:
        plain: the plain VGG19 ONNX file.
        encrypted: its encrypted twin (level 0, as an attacker holds it).
        data: training digits (the attacker draws its subsets here) and held-out digits.
        config: the identical budget of every arm.
        show_progress: progress bars on stderr.

    Returns:
        ``mapping_check`` (the plain file mapped into PyTorch vs ONNX Runtime) and one
        row per (fraction, arm) with the held-out accuracy before and after.
    """
    xs, ys = data.x_test, data.y_test
    plain_onnx_acc = vgg19.accuracy_onnx(plain, xs, ys)
    mapped = vgg_from_onnx(plain)
    check_x = xs[: vgg19.CHECK_DIGITS]
    diff = np.max(
        np.abs(
            _common.torch_forward(mapped, check_x)
            - _common.run_session(_common.ort_session(plain), check_x)
        )
    )
    mapped_acc = vgg19.accuracy_torch(mapped, xs, ys)
    check = {
        "plain_onnx_accuracy": plain_onnx_acc,
        "plain_mapped_torch_accuracy": mapped_acc,
        "max_abs_logit_diff": float(diff),
        "digits": len(check_x),
    }
    if abs(mapped_acc - plain_onnx_acc) > 1e-3:
        raise RuntimeError(f"ONNX -> PyTorch weight mapping is wrong: {check}")

    starts = {
        "from scratch": vgg19.build_model,
        "fine-tune plain": lambda: vgg_from_onnx(plain),
        "fine-tune encrypted (level 0)": lambda: vgg_from_onnx(encrypted),
    }
    order = np.random.default_rng(config.seed).permutation(len(data.x_train))
    rows = []
    before: dict[str, float] = {}
    for fraction in config.fractions:
        idx = np.sort(order[: round(fraction * len(data.x_train))])
        for arm, make in starts.items():
            _common.setup_torch(None, config.seed)  # same init for the scratch arm every time
            model = make()
            if arm not in before:
                before[arm] = vgg19.accuracy_torch(model, xs, ys)
            stats = vgg19.fit(
                model,
                data.x_train[idx],
                data.y_train[idx],
                steps=config.steps,
                batch=config.batch,
                lr=config.lr,
                seed=config.seed,
                desc=f"{arm} {len(idx)}",
                show_progress=show_progress,
            )
            rows.append(
                {
                    "fraction": fraction,
                    "n_digits": len(idx),
                    "arm": arm,
                    "accuracy_before": before[arm],
                    "accuracy_after": vgg19.accuracy_torch(model, xs, ys),
                    **stats,
                }
            )
    return {"mapping_check": check, "config": dataclasses.asdict(config), "rows": rows}
