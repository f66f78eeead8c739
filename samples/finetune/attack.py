"""The fine-tuning attack on your own model: does the public file beat training from scratch?

::

    python -m samples.finetune.attack --public model.enc.onnx --data labelled.npz \\
        [--plain model.onnx] [--share 0.01 0.1] [--seeds 0 1 2] [--json out.json]

``labelled.npz`` holds ``x`` (inputs, the model's layout, float) and ``y`` (integer
class labels). A share ``--test-share`` of it (default 20%) is set aside and never seen
by the attacker: every accuracy is measured there. For each attacker share of the rest,
the attacker of :mod:`samples.finetune.harness` (learning rates swept per seed, early
stopping on a held-out part of their own data, the best checkpoint kept) trains every
arm with the same data and budget:

- ``scratch``: the same graph with fresh weights;
- ``fine-tune public``: the encrypted file as distributed;
- with ``--plain``: ``knows masked, re-inits`` (the masked kernels, found by comparing
  with the plain file, re-initialised first: the worst case) and ``fine-tune plain``;
- with ``--reference ref.onnx`` (weights the model descends from: a public checkpoint it
  was fine-tuned from, or its initial weights): ``fine-tune reference`` (the attacker's
  best start without the public file), ``reference-matched`` (each conv's filters matched
  to the reference's by cosine, undoing keyed wiring; :mod:`samples.finetune.reference_match`)
  and ``matched, kernels from reference`` (also every kernel unlike the reference's
  replaced by it: masked kernels);
- with ``--recover sinkhorn rebasin``: ``sinkhorn-recovered`` (learned permutations on
  the attacker's data) and ``weight-matched`` (Git Re-Basin weight matching to a model the
  attacker trains from scratch on their data); :mod:`samples.finetune.learned`. Both
  are computed once per share on the first seed's data, and need a chain of convs.

It prints one table per share, mean ± standard error over seeds, and the difference
to scratch. The graph is run by :class:`samples.finetune.graph.OnnxModule`: CNN
classifiers (Conv, Gemm, pooling, BatchNormalization, ...); another operator is an
error naming it. Needs the ``samples`` extra (torch).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samples.finetune import harness
from samples.finetune.graph import OnnxModule


def load_labelled(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float32 and ``y`` as int64 from an ``.npz``, checked against each other."""
    with np.load(path) as data:
        missing = {"x", "y"} - set(data.files)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)} (it has {data.files})")
        x, y = np.asarray(data["x"]), np.asarray(data["y"])
    if len(x) != len(y) or y.ndim != 1:
        raise ValueError(f"{path}: x has {len(x)} rows, y shape {y.shape}: one label per row")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: y must hold integer class labels, not {y.dtype}")
    return x.astype(np.float32), y.astype(np.int64)


def arms(public: Path, plain: Path | None) -> dict[str, harness.Start]:
    """The arms to train, by name (every one the same graph)."""
    out = {"scratch": harness.scratch(public), "fine-tune public": harness.from_onnx(public)}
    if plain is not None:
        out["knows masked, re-inits"] = harness.from_onnx(
            public, harness.reinit_masked(plain, public)
        )
        out["fine-tune plain"] = harness.from_onnx(plain)
    return out


def recovery_arms(
    public: Path,
    reference: Path | None,
    recover: Sequence[str],
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cfg: harness.AttackConfig,
) -> dict[str, harness.Start]:
    """The recovery arms (see the module notes); ``data``: the attacker's first-seed
    training and held-out parts (x, y, x_val, y_val)."""
    from samples.finetune import learned, reference_match, wiring

    out: dict[str, harness.Start] = {}
    if reference is not None:
        got = reference_match.match(public, reference)
        matched = harness.from_onnx(public, wiring.apply(got.perms))
        restore = reference_match.restore_from_reference(reference)

        def restored(seed: int) -> torch.nn.Module:
            model = matched(seed)
            restore(model, seed)  # type: ignore[arg-type]
            return model

        out["fine-tune reference"] = harness.from_onnx(reference)
        out["reference-matched"] = matched
        out["matched, kernels from reference"] = restored
    x, y, xv, yv = data
    if "sinkhorn" in recover:
        perms, _ = learned.sinkhorn(public, np.concatenate([x, xv]), np.concatenate([y, yv]))
        out["sinkhorn-recovered"] = harness.from_onnx(public, wiring.apply(perms))
    if "rebasin" in recover:
        own = _own_model(public, data, cfg)
        perms = learned.weight_match(public, own)
        out["weight-matched"] = harness.from_onnx(public, wiring.apply(perms))
    return out


def _own_model(
    public: Path, data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], cfg: Any
) -> OnnxModule:
    """The attacker's own model from scratch, the best of the learning-rate sweep."""
    best: tuple[float, OnnxModule] | None = None
    for lr in cfg.lrs:
        torch.manual_seed(cfg.seeds[0])
        model = harness.scratch(public)(cfg.seeds[0])
        stats = harness.train(model, *data, lr=lr, cfg=cfg, seed=cfg.seeds[0])
        if best is None or stats["val_accuracy"] > best[0]:
            best = (stats["val_accuracy"], model)  # type: ignore[assignment]
    assert best is not None
    return best[1]


def run(
    public: Path,
    data: Path,
    *,
    plain: Path | None = None,
    reference: Path | None = None,
    recover: Sequence[str] = (),
    shares: Sequence[float] = (0.01, 0.1),
    test_share: float = 0.2,
    cfg: harness.AttackConfig | None = None,
) -> dict[str, Any]:
    """Every arm at every attacker share; the results as plain data."""
    cfg = cfg or harness.AttackConfig()
    x, y = load_labelled(data)
    OnnxModule(public)  # an unsupported operator fails here, before any training
    order = np.random.default_rng(0).permutation(len(x))
    n_test = max(1, round(test_share * len(x)))
    test, pool = np.sort(order[:n_test]), np.sort(order[n_test:])
    x_test, y_test, x_pool, y_pool = x[test], y[test], x[pool], y[pool]
    results: dict[str, Any] = {"test_examples": int(n_test), "shares": []}
    for share in shares:
        n = round(share * len(x_pool))
        if n < cfg.min_val + 2:
            raise ValueError(
                f"a share of {share:g} is {n} examples: too few for a training and a "
                f"held-out part (at least {cfg.min_val + 2})"
            )
        row: dict[str, Any] = {"share": share, "examples": n, "arms": {}}
        tr, va = harness.split(len(x_pool), n, cfg, cfg.seeds[0])
        first = (x_pool[tr], y_pool[tr], x_pool[va], y_pool[va])
        starts = {**arms(public, plain), **recovery_arms(public, reference, recover, first, cfg)}
        for name, start in starts.items():
            print(f"{name}, {n} examples", file=sys.stderr, flush=True)
            before = harness.accuracy(start(cfg.seeds[0]), x_test, y_test)
            res = harness.attack_arm(start, x_pool, y_pool, x_test, y_test, n, cfg, log=_to_stderr)
            row["arms"][name] = {"before": before, "mean": res["mean"], "se": res["se"]}
        results["shares"].append(row)
    return results


def table(results: dict[str, Any]) -> str:
    """The fine-tune-vs-scratch table, in Markdown."""
    lines = []
    for row in results["shares"]:
        ref = row["arms"]["scratch"]
        lines += [
            f"attacker holds {row['share']:g} of the data ({row['examples']} examples); "
            f"accuracy on {results['test_examples']} examples they never saw:",
            "",
            "| arm | before | after (mean ± SE) | vs scratch (points) |",
            "|---|---|---|---|",
        ]
        for name, arm in row["arms"].items():
            diff = 100 * (arm["mean"] - ref["mean"])
            se = 100 * math.hypot(arm["se"], ref["se"])
            vs = "–" if name == "scratch" else f"{diff:+.1f} ± {se:.1f}"
            lines.append(
                f"| {name} | {100 * arm['before']:.1f}% | {100 * arm['mean']:.1f} ± "
                f"{100 * arm['se']:.1f} | {vs} |"
            )
        lines.append("")
    return "\n".join(lines)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m samples.finetune.attack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--public", type=Path, required=True, help="the encrypted .onnx")
    p.add_argument("--data", type=Path, required=True, help=".npz with x and y")
    p.add_argument("--plain", type=Path, help="the plain .onnx (adds two arms)")
    p.add_argument(
        "--reference", type=Path, help="weights the model descends from (adds three arms)"
    )
    p.add_argument(
        "--recover", nargs="+", choices=("sinkhorn", "rebasin"), default=[], help="recoveries"
    )
    p.add_argument("--share", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--test-share", type=float, default=0.2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # seeded runs give the same numbers every time
    cfg = harness.AttackConfig(
        lrs=tuple(args.lrs), seeds=tuple(args.seeds), max_steps=args.max_steps
    )
    try:
        results = run(
            args.public,
            args.data,
            plain=args.plain,
            reference=args.reference,
            recover=args.recover,
            shares=args.share,
            test_share=args.test_share,
            cfg=cfg,
        )
    except (ValueError, OSError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
