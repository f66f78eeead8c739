"""Issue 23, second architecture: the base mode on the folded-BN ResNet.

Same design as :mod:`samples.finetune.base_arms` on the VGG: a public checkpoint
pretrained on digits 0-4, fine-tuned on all ten digits = the victim (both with batch
norm folded into the convs, as exported). The attacker's best start without the public
file is fine-tuning the checkpoint; the arms:

- ``scratch``: the same graph, fresh weights;
- ``desc-checkpoint``: fine-tuning the public checkpoint;
- ``desc-public-0.01``: today's default file (1% masked) of the victim, fine-tuned;
- ``desc-base-all``: the tool's file with ``EncryptOptions(base=checkpoint)`` (conv
  kernels, the folded biases and the Gemm layer from the checkpoint where they differ);
- ``desc-base-all-tier1`` (``--parts tier1``): that file restored to level 1 (a level-1 key
  holder), fine-tuned.

A model trained from a random initialisation has no public checkpoint; the attacker's
best start without its file is scratch. ``plain-base-all-init``: the study's plain ResNet
(trained on all ten digits) encrypted with an untrained ResNet as its base (initialised
from another seed, ``INIT_SEED``, and folded like the others), against scratch.

Command line (each arm cached in ``benchmarks/results/finetune/<resnet study>/``)::

    nice -n 19 python -m samples.finetune.base_resnet --data 0.01 [--parts tool init public tier1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from samples.finetune import harness, resnet, study, twin
from samples.paper import _common, vgg19

PRETRAIN_CLASSES = 5
SEEDS5 = (0, 1, 2, 3, 4)
INIT_SEED = 2027  # the untrained base's initialisation (the plain model trained from 0)


def _fit_export(model: resnet.ResNet, x: Any, y: Any, seed: int, data: Any, path: Path) -> None:
    t = resnet.TRAIN
    steps = t["epochs"] * math.ceil(len(x) / t["batch"])
    vgg19.fit(model, x, y, steps=steps, batch=t["batch"], lr=t["lr"], seed=seed, desc=path.stem)
    folded = model.fold().eval()
    path.unlink(missing_ok=True)
    _common.export_onnx(folded, torch.from_numpy(data.x_test[:2]), path, external_data=False)
    model.train()


def checkpoint_and_victim(data: vgg19.Data) -> tuple[Path, Path]:
    """(public checkpoint, victim), trained and exported on a cache miss."""
    work = study.folder("resnet")
    ckpt, victim = work / "checkpoint.onnx", work / "victim-descended.onnx"
    if ckpt.exists() and victim.exists():
        return ckpt, victim
    _common.setup_torch(1, 0)
    model = resnet.ResNet()
    keep = data.y_train < PRETRAIN_CLASSES
    _fit_export(model, data.x_train[keep], data.y_train[keep], 0, data, ckpt)
    _fit_export(model, data.x_train, data.y_train, 1, data, victim)
    return ckpt, victim


def untrained_base(data: vgg19.Data) -> Path:
    """An untrained ResNet (seeded, batch norm folded at its initial statistics)."""
    path = study.folder("resnet") / f"init-{INIT_SEED}.onnx"
    if not path.exists():
        _common.setup_torch(1, INIT_SEED)
        folded = resnet.ResNet().fold().eval()
        _common.export_onnx(folded, torch.from_numpy(data.x_test[:2]), path, external_data=False)
    return path


def _tool_file(victim: Path, **options: Any) -> Path:
    tag = "base-all" if "base" in options else f"public-{options['budget']:g}"
    return twin.encrypted(victim, victim.with_name(f"{victim.stem}-{tag}.onnx"), **options)


def _arm_path(name: str, fraction: float, cfg: harness.AttackConfig) -> Path:
    tag = f"d{fraction:g}-{_common.config_hash(harness.config_dict(cfg))}"
    return study.arms_dir("resnet") / f"{tag}-{name}.json"


def run_arm(
    name: str,
    start: harness.Start,
    data: vgg19.Data,
    fraction: float,
    cfg: harness.AttackConfig,
    victim: str = "descended",
) -> None:
    """Measure one arm and write it the moment it ends (nothing to do if it is written)."""
    info = {"arm": name, "arch": "resnet", "data": fraction, "victim": victim}
    study.measure_arm(_arm_path(name, fraction, cfg), start, data, fraction, cfg, info)


PARTS = ("tool", "init", "public", "tier1")  # after scratch and the checkpoint, in this order


def run(fraction: float, max_steps: int, parts: Sequence[str] = PARTS[:3]) -> None:
    """The arms at one data size, 5 seeds, the rate swept on every seed: scratch and the
    checkpoint (the references), then ``parts``: the tool's base file, the untrained-base
    file of the plain model, today's default file, the base file's level-1 holder."""
    data = vgg19.load_data()
    ckpt, victim = checkpoint_and_victim(data)
    cfg = harness.AttackConfig(seeds=SEEDS5, max_steps=max_steps, sweep_every_seed=True)
    run_arm("scratch", harness.scratch(victim), data, fraction, cfg)
    run_arm("desc-checkpoint", harness.from_onnx(ckpt), data, fraction, cfg)
    if "tool" in parts:
        start = harness.from_onnx(_tool_file(victim, base=ckpt))
        path = _arm_path("desc-base-all", fraction, cfg)
        if not path.exists() and twin.same_start(start, harness.from_onnx(ckpt)):
            twin.write_twin(path, _arm_path("desc-checkpoint", fraction, cfg), "desc-base-all")
        run_arm("desc-base-all", start, data, fraction, cfg)
    if "init" in parts:
        plain, _ = study.plain_model(data, "resnet")
        init = harness.from_onnx(_tool_file(plain, base=untrained_base(data)))
        run_arm("plain-base-all-init", init, data, fraction, cfg, victim="plain")
    if "public" in parts:
        public = _tool_file(victim, budget=0.01)
        run_arm("desc-public-0.01", harness.from_onnx(public), data, fraction, cfg)
    if "tier1" in parts:
        level1 = twin.tier_file(_tool_file(victim, base=ckpt), 1)
        run_arm("desc-base-all-tier1", harness.from_onnx(level1), data, fraction, cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the ResNet base arms at one data size."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=float, default=0.01, help="attacker's share of the 8,000 digits")
    p.add_argument("--max-steps", type=int, default=harness.AttackConfig.max_steps)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS[:3]))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    run(args.data, args.max_steps, args.parts)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
