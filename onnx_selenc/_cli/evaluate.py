"""``onnx-selenc evaluate``: the research sweep of budgets x selection strategies."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from onnx_selenc._cli.args import _floats, add_calibration_args, load_calibration
from onnx_selenc._cli.output import add_json_flag, emit, show_progress
from onnx_selenc._encrypt.evaluate import DEFAULT_STRATEGIES, format_table, sweep, write_outputs
from onnx_selenc._encrypt.options import CalibratedLevels, EncryptOptions
from onnx_selenc._onnx.modelio import load_model, model_inputs
from onnx_selenc._select.calibration import Calibration


def add_evaluate_command(sub: Any) -> None:
    """The ``evaluate`` sub-command."""
    p = sub.add_parser(
        "evaluate",
        help="research: sweep budgets x selection strategies on your data; table and plots",
    )
    p.add_argument("model")
    p.add_argument(
        "--data",
        metavar="EVAL.npz",
        help="evaluation inputs (default: half of the calibration inputs)",
    )
    p.add_argument(
        "--labels",
        metavar="LABELS.npy",
        help="class labels (accuracy) or clean targets (psnr) for --data",
    )
    p.add_argument(
        "--budgets",
        type=_floats,
        default=[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02],
        metavar="B1,B2,...",
        help="fractions of all conv weights",
    )
    p.add_argument(
        "--strategies",
        type=lambda t: t.split(","),
        default=list(DEFAULT_STRATEGIES),
        metavar="IMPORTANCE:ALLOCATION,...",
        help=f"default: {','.join(DEFAULT_STRATEGIES)}",
    )
    p.add_argument(
        "--metric", default="auto", choices=["auto", "agreement", "accuracy", "psnr", "r2"]
    )
    p.add_argument("--chance", type=float, help="report the smallest fraction reaching this")
    p.add_argument(
        "--level-targets",
        type=_floats,
        metavar="Q1,...,1.0",
        help="also measure quality per level, levels calibrated to these",
    )
    p.add_argument("--level-budget", type=float, help="budget for the level curves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="write sweep.csv, sweep.json and PNG plots")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars (shown only on a terminal)"
    )
    add_calibration_args(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    calibration = load_calibration(args, args.model)
    if calibration is None:
        raise ValueError("evaluate needs calibration inputs: --calib or --calib-images")
    names, _ = model_inputs(args.model)
    if args.data:
        evaluation = Calibration.from_npz(args.data, input_names=names)
    else:
        calibration, evaluation = calibration.split(0.5, seed=args.seed)
    labels = np.load(args.labels, allow_pickle=False) if args.labels else None
    if labels is not None and len(labels) != evaluation.n:
        raise ValueError(
            f"{len(labels)} labels for {evaluation.n} evaluation samples (labels go with --data)"
        )
    result = sweep(
        load_model(args.model),
        calibration,
        evaluation,
        budgets=args.budgets,
        strategies=args.strategies,
        options=_options(args),
        metric=args.metric,
        labels=labels,
        level_budget=args.level_budget,
    )
    lines = [format_table(result, chance=args.chance)]
    files = []
    if args.out:
        files = write_outputs(result, args.out, title=Path(args.model).name, chance=args.chance)
        lines += [f"wrote {path}" for path in files]
    doc = {
        "metric": result.metric,
        "plain_quality": result.plain_quality,
        "points": [asdict(p) for p in result.points],
        "levels": [asdict(c) for c in result.levels],
        "chance": args.chance,
        "smallest_fraction_reaching_chance": (
            None if args.chance is None else result.smallest_fraction_reaching(args.chance)
        ),
        "files": [str(f) for f in files],
    }
    return emit(args, doc, lines)


def _options(args: argparse.Namespace) -> EncryptOptions:
    """What ``encrypt`` would be given for the settings the sweep does not vary."""
    targets = args.level_targets
    if targets is None:
        return EncryptOptions(seed=args.seed, show_progress=show_progress(args))
    return EncryptOptions(
        levels=len(targets),
        split=CalibratedLevels(tuple(targets)),
        seed=args.seed,
        show_progress=show_progress(args),
    )
