"""Issue 23: what level 0 may keep of a victim fine-tuned from a public checkpoint.

Against a reference the weights descend from, wiring and 1-50% masks leave a head start
(``desc-*`` arms of :mod:`samples.finetune.descent`). The attacker's best start without
the public file is fine-tuning the checkpoint (``desc-checkpoint``). These arms publish
the victim with the checkpoint's values in place of its own for a growing set of
initializers, to find what must be sealed for level 0 to give nothing more:

- ``desc-base-conv``: every conv weight from the checkpoint (conv biases, Gemm layers the
  victim's): what the first cut of ``EncryptOptions(base=checkpoint)`` published (its
  arm fine-tuned that tool file, checked weight for weight against this construction);
- ``desc-base-all``: the tool's file with ``EncryptOptions(base=checkpoint)`` as it is
  now (conv kernels, biases and the Gemm layers from the checkpoint);
- ``desc-base-weights``: every Conv/Gemm/MatMul weight from the checkpoint (biases the
  victim's): what a mode that also sealed the Gemm layers would publish;
- ``desc-base-all-tier1``: the tool's base file restored to level 1 (a level-1 key
  holder: the most important fifth of the fine-tuned kernels, and the other tensors),
  fine-tuned (``desc-base-tier1``: the same for the first cut);
- ``secret-base-all-init`` (part ``init``): a victim trained from a seed nobody else has
  (:func:`descent.secret_victim`) has no checkpoint, and the attacker's best start
  without its file is scratch; its file with an untrained VGG as the base (initialised
  from ``INIT_SEED``), against scratch.

``--sweep every`` chooses the learning rate on each seed's own held-out part (the
harness default); with 80 digits a rate chosen on seed 0 alone left several runs of the
checkpoint-like starts stuck at 49.6% (five digits), so the decisive comparison is made
that way, with the checkpoint and scratch arms under the same rule.

Command line (each arm cached in ``benchmarks/results/finetune/<study>/`` as it ends)::

    nice -n 19 python -m samples.finetune.base_arms --data 0.01
    nice -n 19 python -m samples.finetune.base_arms --data 0.1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper

from samples.finetune import descent, harness, study, twin
from samples.finetune.graph import WEIGHTED
from samples.paper import vgg19


def from_checkpoint(victim: Path, ckpt: Path, which: str) -> Path:
    """The victim with the checkpoint's values in the chosen initializers (cached)."""
    out = victim.with_name(f"{victim.stem}-base-{which}.onnx")
    if out.exists():
        return out
    model, base = onnx.load(str(victim)), onnx.load(str(ckpt))
    base_inits = {t.name: t for t in base.graph.initializer}
    ops = ("Conv",) if which == "conv" else WEIGHTED
    chosen = {n.input[1] for n in model.graph.node if n.op_type in ops and len(n.input) > 1}
    for t in model.graph.initializer:
        if t.name in chosen:
            src = numpy_helper.to_array(base_inits[t.name])
            if src.shape != tuple(t.dims):
                raise ValueError(f"{t.name}: checkpoint shape {src.shape} != {tuple(t.dims)}")
            t.CopyFrom(numpy_helper.from_array(src, t.name))
    tmp = out.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out


def tool_file(victim: Path, ckpt: Path) -> Path:
    """The real tool's public file with the checkpoint as base (cached beside the victim)."""
    return _encrypted(victim, victim.with_name(f"{victim.stem}-tool-base-all.onnx"), ckpt)


def _encrypted(plain: Path, out: Path, base: Path) -> Path:
    return twin.encrypted(plain, out, base=base)


INIT_SEED = 2027  # the untrained base (not the victim's seed, nor one the study guesses)


def run(data_fraction: float, max_steps: int, parts: Sequence[str], every: bool) -> None:
    """The base arms at one data size, 5 seeds each (each cached as it ends)."""
    data = vgg19.load_data()
    plain, _ = study.plain_model(data)
    ckpt, victim = descent.checkpoint_and_victim(data)
    cfg = harness.AttackConfig(seeds=descent.SEEDS5, max_steps=max_steps, sweep_every_seed=every)
    extra: dict[str, Any] = {"victim": "descended"}
    if every:  # the references under the same rule (with seed-0 sweeps they exist already)
        descent.run_arm("scratch", harness.scratch(plain), data, data_fraction, cfg, extra)
        descent.run_arm("desc-checkpoint", harness.from_onnx(ckpt), data, data_fraction, cfg, extra)
    for which in parts:
        if which == "init":
            victim_s = descent.secret_victim(data)
            init = descent.initial_reference(data, INIT_SEED)
            out = victim_s.with_name(f"{victim_s.stem}-tool-base-all-init.onnx")
            start = harness.from_onnx(_encrypted(victim_s, out, init))
            info = {"victim": "secret", "tool": True}
            descent.run_arm("secret-base-all-init", start, data, data_fraction, cfg, info)
            continue
        if which == "tool":
            start = harness.from_onnx(tool_file(victim, ckpt))
            info = {**extra, "tool": True}
            path = descent.arm_path("desc-base-all", data_fraction, cfg)
            if not path.exists() and twin.same_start(start, harness.from_onnx(ckpt)):
                ref = descent.arm_path("desc-checkpoint", data_fraction, cfg)
                twin.write_twin(path, ref, "desc-base-all", info)
            descent.run_arm("desc-base-all", start, data, data_fraction, cfg, info)
            continue
        if which == "tier1":
            start = harness.from_onnx(twin.tier_file(tool_file(victim, ckpt), 1))
            descent.run_arm("desc-base-all-tier1", start, data, data_fraction, cfg, extra)
            continue
        pub = from_checkpoint(victim, ckpt, which)
        start = harness.from_onnx(pub)
        descent.run_arm(f"desc-base-{which}", start, data, data_fraction, cfg, dict(extra))


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the base arms at one data size."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=float, default=0.01, help="attacker's share of the 8,000 digits")
    p.add_argument("--max-steps", type=int, default=harness.AttackConfig.max_steps)
    parts = ["tool", "tier1", "init", "conv", "weights"]
    p.add_argument("--parts", nargs="+", default=parts, choices=parts)
    p.add_argument("--sweep", choices=("every", "first"), default="every")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    run(args.data, args.max_steps, args.parts, args.sweep == "every")
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
