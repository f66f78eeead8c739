"""The ``onnx-selenc`` command line: argument parsing over the public API, nothing more."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from onnx_selenc import __version__
from onnx_selenc._cli.args import _floats, add_calibration_args, check_level, load_calibration
from onnx_selenc._cli.evaluate import add_evaluate_command
from onnx_selenc._cli.output import (
    EXIT_CODES,
    Parser,
    add_json_flag,
    emit,
    own_warnings,
    run_command,
    show_progress,
    warn,
)
from onnx_selenc._cli.passphrase import (
    _add_passphrase_args,
    _key_passphrase,
    _passphrase,
    existing_key_file,
)
from onnx_selenc._cli.run import add_run_command
from onnx_selenc._crypto.tiers import export_key, key_file_info
from onnx_selenc._deploy.inspect import format_report, inspect_model
from onnx_selenc._encrypt.files import IMPORTANCES, EncryptResult, encrypt
from onnx_selenc._encrypt.options import CalibratedLevels, EncryptOptions, FixedLevels
from onnx_selenc._select.levels import TOLERANCE, LevelReport
from onnx_selenc._select.masking import MASKINGS
from onnx_selenc._select.objective import OBJECTIVES
from onnx_selenc._select.selection import ALLOCATIONS, LEVEL_ORDERS
from onnx_selenc.exceptions import BudgetTooSmall, LevelTargetWarning

# EXIT_CODES lives with the error reporting (output.py); named here as before.
__all__ = ["EXIT_CODES", "build_parser", "main"]


def cmd_inspect(args: argparse.Namespace) -> int:
    report = inspect_model(args.model)
    return emit(args, report.as_dict(), format_report(report))


def _encrypt_from_args(args: argparse.Namespace, protect: str | None) -> EncryptResult:
    split: FixedLevels | CalibratedLevels
    if args.level_targets is not None:
        if args.level_fractions is not None:
            raise ValueError("--level-targets replaces --level-fractions: give one of them")
        split = CalibratedLevels(tuple(args.level_targets))
    else:
        fractions = None if args.level_fractions is None else tuple(args.level_fractions)
        split = FixedLevels(fractions, args.level_order)
    options = EncryptOptions(
        levels=args.levels,
        budget=args.budget,
        allocation=args.allocation,
        importance=args.importance,
        split=split,
        objective=args.objective,
        layers=tuple(args.layers or ()),
        masking=args.masking,
        seed=args.seed,
        external_data=args.external_data,
        show_progress=show_progress(args),
        allow_budget_growth=args.allow_budget_growth,
        wiring=args.wiring,
        base=args.base,
    )
    try:
        return encrypt(
            args.model,
            args.output,
            key_file=args.keys,
            options=options,
            calibration=load_calibration(args, args.model),
            passphrase=protect,
            overwrite=args.overwrite,
        )
    except BudgetTooSmall as exc:  # the way out in this interface's words
        raise BudgetTooSmall(
            exc.detail, exc.kernels, exc.share, "--allow-budget-growth encrypts that many"
        ) from None


def cmd_encrypt(args: argparse.Namespace) -> int:
    if args.level_targets is not None and not (args.calib or args.calib_images):
        raise ValueError(
            "--level-targets needs calibration inputs, on which the levels are searched: "
            "add --calib INPUTS.npz or --calib-images DIR"
        )
    protect = _passphrase(args, "protect_env", "protect", "new key passphrase: ")
    with own_warnings() as warned:
        if args.strict:  # raised before anything is written
            warnings.filterwarnings("error", category=LevelTargetWarning)
        try:
            result = _encrypt_from_args(args, protect)
        except LevelTargetWarning as exc:
            raise LevelTargetWarning(f"--strict: {exc}; nothing was written") from None
    # The API warns "skipping" for each node left out: said once, below, from the result.
    skipped = {f"skipping {u.node}: {u.reason}" for u in result.unsupported}
    if result.base is not None:  # listed below, from the result
        skipped |= {
            f"{a}: not in the base ({r}); every kernel masked instead"
            for a, r in result.base.missing
        }
    warned = [w for w in warned if " ".join(w.split()) not in skipped]
    for message in warned:
        warn(message)
    for u in result.unsupported:
        warn(f"not encrypted: {u.node}: {u.reason}")
    lines = [
        f"encrypted {result.encrypted_weights} of {result.conv_weights} conv weights "
        f"({100 * result.fraction:.3f}%) in {len(result.layers)} tensors, "
        f"{result.levels} levels",
        "wrote " + ", ".join(str(p) for p in result.model_files),
    ]
    wiring = result.wiring
    if wiring is not None:
        lines.append(
            f"wired {len(wiring.wired)} of {len(wiring.wired) + len(wiring.unwired)} convs "
            "(output channels in a secret order until level 1)"
        )
        lines += [f"  not wired: {u.node}: {u.reason}" for u in wiring.unwired]
    base = result.base
    if base is not None:
        lines.append(
            f"base: level 0 holds the base's kernels in {len(base.matched)} conv weights "
            f"(matched by {base.matched_by}): {base.differing_kernels} kernels differ from "
            f"the base's and are encrypted, {base.equal_kernels} equal it"
        )
        if base.other_tensors:
            lines.append(
                f"  and the base's values in {len(base.other_tensors)} other tensors (biases, "
                f"batch norms, dense layers: {base.other_values} values differ), back at level 1"
            )
        lines += [f"  not in the base: {a}: {r}" for a, r in base.missing]
    report = result.level_report
    if report is not None:
        lines.append(f"levels calibrated to targets ({report.objective}, order: {report.order}):")
        lines.append("  level  target  calibration  held-out")
        for m in range(result.levels + 1):
            target = "-" if m == 0 else f"{report.targets[m - 1]:.2f}"
            held = "-" if report.held_out is None else f"{report.held_out[m]:.3f}"
            lines.append(f"  {m:>5}  {target:>6}  {report.calibration[m]:>11.3f}  {held:>8}")
        if report.held_out is not None:
            verdict = "all within" if report.within(TOLERANCE) else "NOT all within"
            lines.append(
                f"  held-out ({report.held_out_samples} inputs, sampling error "
                f"+-{report.sampling_error():.2f}): {verdict} the tolerance of "
                f"+-{TOLERANCE:.2f}"
            )
    lines.append(f"owner key (level {result.levels}, id {result.key_id}): {result.key_file}")
    doc = {
        "model_files": [str(p) for p in result.model_files],
        "key_file": str(result.key_file),
        "key_id": result.key_id,
        "levels": result.levels,
        "encrypted_weights": result.encrypted_weights,
        "conv_weights": result.conv_weights,
        "fraction": result.fraction,
        "tensors": len(result.layers),
        "unsupported": [asdict(u) for u in result.unsupported],
        "wiring": None
        if wiring is None
        else {
            "wired": [layer.node for layer in wiring.wired],
            "not_wired": [asdict(u) for u in wiring.unwired],
        },
        "base": None if base is None else asdict(base),
        "level_report": None if report is None else _level_report_doc(report),
        "byte_identical": result.byte_identical,
        "warnings": warned,
    }
    return emit(args, doc, lines)


def _level_report_doc(report: LevelReport) -> dict[str, Any]:
    """The level table of ``encrypt`` as JSON (held-out figures ``null`` without them)."""
    held = report.held_out is not None
    return {
        "objective": report.objective,
        "order": report.order,
        "targets": list(report.targets),
        "calibration": list(report.calibration),
        "held_out": None if report.held_out is None else list(report.held_out),
        "held_out_samples": report.held_out_samples,
        "sampling_error": report.sampling_error() if held else None,
        "tolerance": TOLERANCE,
        "within_tolerance": report.within(TOLERANCE) if held else None,
    }


def cmd_export_key(args: argparse.Namespace) -> int:
    passphrase = _key_passphrase(args, args.key_file)
    check_level(args.level, key_file_info(args.key_file)["levels"])
    protect = _passphrase(args, "protect_env", "protect", "new key passphrase: ")
    key = export_key(
        args.key_file,
        args.level,
        args.output,
        passphrase=passphrase,
        new_passphrase=protect,
        overwrite=args.overwrite,
    )
    doc = {
        "key_file": str(args.output),
        "key_id": key.key_id,
        "level": key.level,
        "levels": key.levels,
        "protected": protect is not None,
    }
    return emit(args, doc, f"wrote level-{key.level} key (id {key.key_id}) to {args.output}")


def cmd_keys_info(args: argparse.Namespace) -> int:
    # Public facts: no passphrase is ever asked.
    info = key_file_info(existing_key_file(args.key_file))
    return emit(args, info, [f"{k}: {v}" for k, v in info.items()])


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="onnx-selenc",
        description="Selective, tiered encryption of ONNX models that still run in ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version=f"onnx-selenc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="conv weights of a model; manifest of an encrypted one")
    p.add_argument("model")
    add_json_flag(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("encrypt", help="encrypt a model into tiered levels")
    p.add_argument("model")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="encrypted model path (with external data also <output>.data); "
        "must not exist unless --overwrite",
    )
    p.add_argument(
        "--keys",
        required=True,
        help="owner key file to create: must not exist, even with --overwrite "
        "(losing an owner key loses access to its model)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing encrypted model at -o and its <output>.data "
        "(the tier keys handed out for it stop working); never a key file",
    )
    p.add_argument(
        "--wiring",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also give each conv's output channels a secret order in the public file "
        "(level 0), put back by level 1; the layers it cannot wire are listed with the "
        "reason (default: off)",
    )
    p.add_argument(
        "--base",
        metavar="PUBLIC.onnx",
        help="the public model these weights were fine-tuned from: every kernel that differs "
        "from its kernel is encrypted and level 0 holds the base's, so the public file gives "
        "nothing the base lacks in those weights (a fine-tuning attacker's best start)",
    )
    p.add_argument("--levels", type=int, default=5, help="number of service levels (default 5)")
    p.add_argument(
        "--budget",
        type=float,
        default=0.01,
        help="fraction of all conv weights to encrypt (balanced), or the per-layer "
        "kernel ratio (uniform); default 0.01",
    )
    p.add_argument(
        "--allow-budget-growth",
        action="store_true",
        help="where the levels change the outputs only with more kernels than the budget "
        "chose (kernels that feed unused channels), encrypt those (default: an error "
        "that says how many)",
    )
    p.add_argument(
        "--allocation",
        choices=list(ALLOCATIONS),
        help="sensitivity (default with calibration), balanced (default without), "
        "uniform (the paper's per-layer ratio)",
    )
    p.add_argument(
        "--importance",
        choices=list(IMPORTANCES),
        help="kernel scorer: activation (default with calibration), pss, "
        "magnitude (default without), abs-mean, random",
    )
    p.add_argument(
        "--level-targets",
        type=_floats,
        metavar="Q1,...,1.0",
        help="quality per level as a fraction of the plain model's (needs "
        "calibration); the level cuts are searched to meet them",
    )
    p.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default="auto",
        help="how outputs are compared with the plain model's (default auto)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="GLOB",
        help="only these weights / conv nodes (glob patterns)",
    )
    p.add_argument(
        "--level-fractions",
        type=_floats,
        metavar="F1,F2,...",
        help="cumulative share of all encrypted kernels each level restores (increasing)",
    )
    p.add_argument(
        "--level-order",
        choices=list(LEVEL_ORDERS),
        default="most-important-first",
    )
    p.add_argument(
        "--masking",
        choices=list(MASKINGS),
        default="empirical",
        help="empirical (default): whole kernels drawn from the public kernels' joint "
        "distribution; gaussian: the paper's per-position draws, which a covariance test "
        "tells apart (to reproduce the paper, not for files you publish)",
    )
    p.add_argument("--seed", type=int, help="reproducible selection and masking")
    p.add_argument(
        "--external-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write weights to <output>.data (default: as the input)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars (shown only on a terminal)"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="with --level-targets: a level that misses its target on the held-out inputs, "
        "or is not above the level below it, is an error (exit 11, nothing written) "
        "instead of a warning",
    )
    p.add_argument(
        "--protect-env",
        metavar="VAR",
        help="protect the owner key with the passphrase in this variable",
    )
    p.add_argument(
        "--protect", action="store_true", help="protect the owner key with a passphrase (prompted)"
    )
    add_calibration_args(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_encrypt)

    add_evaluate_command(sub)

    p = sub.add_parser("export-key", help="derive a lower-tier key file")
    p.add_argument("key_file")
    p.add_argument("--level", type=int, required=True)
    p.add_argument(
        "-o", "--output", required=True, help="tier key file to create (never the source key file)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing tier key file at -o; never an owner "
        "(top-level) key or any other file",
    )
    _add_passphrase_args(p, new=True)
    add_json_flag(p)
    p.set_defaults(func=cmd_export_key)

    # No dest: a missing sub-command is then named by its choices ("{info}"), not by
    # an attribute name no user typed.
    keys = sub.add_parser("keys", help="key file utilities").add_subparsers(required=True)
    p = keys.add_parser(
        "info", help="public facts about a key file (no secrets, no passphrase needed)"
    )
    p.add_argument("key_file")
    add_json_flag(p)
    _add_passphrase_args(p)  # accepted as before; the public facts need no passphrase
    p.set_defaults(func=cmd_keys_info)

    from onnx_selenc._cli.rekey import add_rekey_command

    add_rekey_command(sub)

    from onnx_selenc._cli.decrypt import add_decrypt_command

    add_decrypt_command(sub)

    add_run_command(sub)

    from onnx_selenc._cli.deploy import add_deploy_commands

    add_deploy_commands(sub)
    try:
        from onnx_selenc.blockwise._cli import add_blockwise_commands
    except ImportError:  # the blockwise mode is optional at import time
        pass
    else:
        add_blockwise_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnx-selenc`` command."""
    return run_command(build_parser(), list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
