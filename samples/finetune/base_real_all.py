"""The real model's arm for the base mode as it is now (:mod:`samples.finetune.base_real`
measured its first cut, conv kernels only: ``desc-base``).

``desc-base-all``: the victim's file from ``EncryptOptions(base=wheel)`` with the current
tool, which also gives level 0 the wheel's batch norms and head where they differ,
fine-tuned under the same attack as the other arms of that study (cached per seed).

Command line::

    nice -n 19 python -m samples.finetune.base_real_all --data 0.1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from samples.finetune import base_real, twin
from samples.paper import _common


def tool_file(victim: Path, wheel: Path) -> Path:
    """The victim's public file with the wheel as base (cached beside the victim)."""
    return twin.encrypted(victim, victim.with_name(f"{victim.stem}-base-all.onnx"), base=wheel)


def run(fraction: float, tier1: bool) -> None:
    """The arm at one data size (and, with ``tier1``, its level-1 key holder). A public
    file identical to the wheel, weight for weight, is the checkpoint arm's runs."""
    data, files = base_real.setup()
    public = tool_file(files["victim"], files["wheel"])
    start = base_real.from_file(public)
    folder = base_real.results_dir()
    if twin.same_start(start, base_real.from_file(files["wheel"])):
        # Under every attack setting the checkpoint was measured with: the same runs.
        for ref in folder.glob(f"d{fraction:g}-*-desc-checkpoint.json"):
            path = ref.with_name(ref.name.replace("-desc-checkpoint", "-desc-base-all"))
            if _common.read_json(path) is None:
                twin.write_twin(path, ref, "desc-base-all")
    base_real.run_arm("desc-base-all", start, data, fraction)
    if tier1:
        start = base_real.from_file(twin.tier_file(public, 1))
        base_real.run_arm("desc-base-all-tier1", start, data, fraction)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=float, default=0.1, help="attacker's share of the pool")
    p.add_argument("--tier1", action="store_true", help="also the level-1 key holder")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    run(args.data, args.tier1)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
