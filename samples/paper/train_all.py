"""Train (or load from the cache) every sample model of the paper reproduction.

VGG19 on MNIST as a CIFAR-10 stand-in (CIFAR-10 cannot be downloaded offline here;
MNIST is easier and more redundant), and DnCNN denoisers for sigma 25 and 50. Each model
is cached under ``cache_dir("samples", ...)`` keyed by a hash of its training config,
so a second run only loads; ``--smoke`` trains tiny versions of the same architectures
into a separate cache subfolder (for the test-suite).

Command line::

    python -m samples.paper.train_all [--smoke] [--force] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from samples.paper import dncnn, vgg19


def train_all(
    *, smoke: bool = False, force: bool = False, threads: int | None = 2, show_progress: bool = True
) -> dict[str, Any]:
    """Train or load every sample model.

    Args:
        smoke: tiny runs (1 epoch on 300 digits, 20 DnCNN steps), cached separately.
        force: retrain even when cached.
        threads: torch CPU threads for training.
        show_progress: progress bars on stderr.

    Returns:
        ``{"vgg19": vgg19.Artifacts, "dncnn": {sigma: dncnn.Artifacts}, "seconds": float}``.
    """
    start = time.perf_counter()
    vgg = vgg19.get_model(smoke=smoke, force=force, threads=threads, show_progress=show_progress)
    dn = {
        s: dncnn.get_model(
            s, smoke=smoke, force=force, threads=threads, show_progress=show_progress
        )
        for s in dncnn.SIGMAS
    }
    return {"vgg19": vgg, "dncnn": dn, "seconds": time.perf_counter() - start}


def main(argv: Sequence[str] | None = None) -> int:
    """Train or load everything and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny runs, separate cache")
    parser.add_argument("--force", action="store_true", help="retrain even if cached")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    res = train_all(smoke=args.smoke, force=args.force, threads=args.threads)
    print(
        ("SMOKE run (tiny training; numbers are meaningless)\n" if args.smoke else "")
        + vgg19.describe(res["vgg19"])
    )
    print(
        f"DnCNN held-out photos (never trained on): {', '.join(dncnn.TEST_IMAGES)} "
        f"(centre {dncnn.TEST_CROP}x{dncnn.TEST_CROP} crops)"
    )
    for art in res["dncnn"].values():
        print(dncnn.describe(art))
    print(f"total {res['seconds']:.0f} s (training only on a cache miss)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
