"""Issue 23: the product mode (``EncryptOptions(wiring=True)``) under the study's attacks.

The harness's own wiring files (:mod:`samples.finetune.wiring`) stand in for the mode in
the other parts; here the public file comes from the real tool, at the budget of the
harness's combined arm (today's 1%), on:

- the study's plain VGG19 (width/8): fine-tuned as published, and after the gradient
  recovery (arms beside ``combined-0.01``);
- the victim fine-tuned from the public checkpoint (:mod:`samples.finetune.descent`):
  matched to the checkpoint, and matched with every kernel unlike the checkpoint's taken
  from it (arms beside ``desc-wired-masks-0.01-ref``).

"Channels recovered" needs the true order, which only the owner has: it is read by
matching the public file to the plain model itself (every unmasked kernel is exact).

Command line::

    nice -n 19 python -m samples.finetune.product --data 0.01
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samples.finetune import descent, harness, reference_match, study, wiring
from samples.finetune.graph import OnnxModule
from samples.paper import vgg19

FRACTION = study.COMBINED_FRACTION


def tool_file(plain: Path, fraction: float = FRACTION) -> Path:
    """The real tool's public file with wiring on (cached beside ``plain``)."""
    from onnx_selenc import EncryptOptions, encrypt

    if "wiring" not in {f.name for f in dataclasses.fields(EncryptOptions)}:
        raise RuntimeError("this onnx_selenc has no wiring mode (EncryptOptions(wiring=True))")
    out = plain.with_name(f"{plain.stem}-tool-wiring-{fraction:g}.onnx")
    if not out.exists():
        key = out.with_suffix(".key")
        key.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opts = EncryptOptions(budget=fraction, wiring=True, **study.ENCRYPTION)
            encrypt(plain, out, key_file=key, options=opts)
    return out


def _true_perms(public: Path, plain: Path) -> list[list[int]]:
    """The owner's view of the wiring: the public file matched to the plain model."""
    return reference_match.match(public, plain).perms


def _masked_share(plain: Path, public: Path, perms: list[list[int]]) -> float:
    """Share of conv weights in kernels that differ from the plain ones, wiring undone."""
    a = OnnxModule(plain)
    b = harness.from_onnx(public, wiring.apply(perms))(0)
    changed = total = 0
    for key in a.conv_weight_names():
        p, q = a.params[key].detach(), b.params[key].detach()  # type: ignore[index]
        changed += int((p != q).flatten(2).any(dim=2).sum()) * int(np.prod(p.shape[2:]))
        total += p.numel()
    return changed / total


def run(data_fraction: float, max_steps: int) -> None:
    """The product-mode arms at one data size (each cached as it ends)."""
    data = vgg19.load_data()
    plain, _ = study.plain_model(data)
    n = round(data_fraction * len(data.x_train))
    cfg = harness.AttackConfig(max_steps=max_steps)
    pub = tool_file(plain)
    truth = _true_perms(pub, plain)
    extra: dict[str, Any] = {"fraction": FRACTION, "tool": True}
    extra["masked_fraction"] = _masked_share(plain, pub, truth)
    name = f"tool-wiring-{FRACTION:g}"
    descent.run_arm(name, harness.from_onnx(pub), data, data_fraction, cfg, extra)
    if not descent.arm_path(f"{name}-recovered-grad", data_fraction, cfg).exists():
        idx = np.concatenate(harness.split(len(data.x_train), n, cfg, cfg.seeds[0]))
        est, history = wiring.recover_gradient(pub, data.x_train[idx], data.y_train[idx])
        rec = {"recovered_channels": wiring.agreement(est, truth), "loss_history": history}
        start = harness.from_onnx(pub, wiring.apply(est))
        descent.run_arm(f"{name}-recovered-grad", start, data, data_fraction, cfg, {**extra, **rec})
    # The descended victim, its file from the tool, against the public checkpoint.
    ckpt, victim = descent.checkpoint_and_victim(data)
    dpub = tool_file(victim)
    dtruth = _true_perms(dpub, victim)
    got = reference_match.match(dpub, ckpt)
    matched = harness.from_onnx(dpub, wiring.apply(got.perms))
    restore = reference_match.restore_from_reference(ckpt)

    def restored(seed: int) -> torch.nn.Module:
        model = matched(seed)
        restore(model, seed)  # type: ignore[arg-type]
        return model

    dcfg = harness.AttackConfig(seeds=descent.SEEDS5, max_steps=max_steps, sweep_every_seed=False)
    rec2: dict[str, Any] = {
        "fraction": FRACTION,
        "tool": True,
        "masked_fraction": _masked_share(victim, dpub, dtruth),
        "recovered_channels": wiring.agreement(got.perms, dtruth),
        "similarity": got.mean_similarity,
        "victim": "descended",
    }
    descent.run_arm(f"desc-{name}-ref", matched, data, data_fraction, dcfg, rec2)
    descent.run_arm(f"desc-{name}-ref-restore", restored, data, data_fraction, dcfg, rec2)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the product mode's arms at one data size."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=float, default=0.01, help="attacker's share of the 8,000 digits")
    p.add_argument("--max-steps", type=int, default=harness.AttackConfig.max_steps)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    try:
        run(args.data, args.max_steps)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
