"""The ``onnx-selenc`` command line: argument parsing over the public API, nothing more."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnx_selenc import __version__, exceptions
from onnx_selenc._crypto.keys import (
    LevelKey,
    export_key,
    is_protected,
    key_from_env,
    key_info,
    read_key_file,
)
from onnx_selenc._deploy.inspect import format_report, inspect_model
from onnx_selenc._encrypt.files import IMPORTANCES, EncryptResult, encrypt
from onnx_selenc._encrypt.options import CalibratedLevels, EncryptOptions, FixedLevels
from onnx_selenc._load.loader import load_session
from onnx_selenc._onnx.modelio import load_model, model_inputs
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.evaluate import DEFAULT_STRATEGIES, format_table, sweep, write_outputs
from onnx_selenc._select.levels import TOLERANCE
from onnx_selenc._select.masking import MASKINGS
from onnx_selenc._select.objective import OBJECTIVES
from onnx_selenc._select.selection import ALLOCATIONS, LEVEL_ORDERS

# Exit codes, one per kind of failure, so scripts can tell them apart.
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (exceptions.KeyMismatch, 3),
    (exceptions.LevelNotGranted, 4),
    (exceptions.InvalidBundle, 5),
    (exceptions.FormatError, 6),  # includes KeyFileError
    (exceptions.UnsupportedModel, 7),
    (exceptions.NotEncrypted, 8),
    (exceptions.UnsafeSessionOptions, 9),
    (exceptions.SelfCheckFailed, 10),  # a bug in onnx-selenc: nothing was written
    (exceptions.SelencError, 1),
    (FileExistsError, 1),
    (FileNotFoundError, 1),
    (OSError, 1),
    (ValueError, 1),
    (KeyError, 1),
    (TypeError, 1),
]


def _passphrase(
    args: argparse.Namespace, env_attr: str, prompt_attr: str, prompt: str
) -> str | None:
    env = getattr(args, env_attr, None)
    if env:
        if env not in os.environ:
            raise ValueError(f"environment variable {env} (passphrase) is not set")
        return os.environ[env]
    if getattr(args, prompt_attr, False):
        return getpass.getpass(prompt)
    return None


def _key_passphrase(args: argparse.Namespace, key_path: str) -> str | None:
    given = _passphrase(args, "passphrase_env", "ask_passphrase", "key passphrase: ")
    if given is None and is_protected(key_path):
        if not sys.stdin.isatty():
            raise exceptions.KeyFileError(
                f"{key_path} is passphrase-protected: use --passphrase-env VAR or --ask-passphrase"
            )
        given = getpass.getpass(f"passphrase for {key_path}: ")
    return given


def _add_passphrase_args(p: argparse.ArgumentParser, *, new: bool = False) -> None:
    p.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="read the key file's passphrase from this environment variable",
    )
    p.add_argument("--ask-passphrase", action="store_true", help="prompt for the passphrase")
    if new:
        p.add_argument(
            "--protect-env",
            metavar="VAR",
            help="protect the new key file with the passphrase in this variable",
        )
        p.add_argument(
            "--protect",
            action="store_true",
            help="protect the new key file with a passphrase (prompted)",
        )


def cmd_inspect(args: argparse.Namespace) -> int:
    report = inspect_model(args.model)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(format_report(report))
    return 0


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """Options that name unlabelled calibration inputs (shared by encrypt and evaluate)."""
    g = p.add_argument_group("calibration inputs (unlabelled)")
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--calib", metavar="INPUTS.npz", help="input name -> array, samples along axis 0"
    )
    src.add_argument("--calib-images", metavar="DIR", help="a folder of image files")
    g.add_argument(
        "--calib-size",
        type=_ints,
        metavar="H,W",
        help="resize images to this (default: the model input's fixed size)",
    )
    g.add_argument(
        "--calib-scale",
        type=float,
        default=1 / 255,
        help="pixel scale before mean/std (default 1/255)",
    )
    g.add_argument("--calib-mean", type=_floats, default=[0.0, 0.0, 0.0], metavar="M1,M2,M3")
    g.add_argument("--calib-std", type=_floats, default=[1.0, 1.0, 1.0], metavar="S1,S2,S3")
    g.add_argument("--calib-layout", choices=["NCHW", "NHWC"], default="NCHW")
    g.add_argument("--calib-channels", choices=["RGB", "BGR", "L"], default="RGB")
    g.add_argument("--calib-limit", type=int, help="use at most this many images")


def load_calibration(args: argparse.Namespace, model_path: str) -> Calibration | None:
    """Build the calibration inputs the options name (None when there are none)."""
    if not args.calib and not args.calib_images:
        return None
    names, shape = model_inputs(model_path)
    if args.calib:
        return Calibration.from_npz(args.calib, input_names=names)
    size = args.calib_size
    if size is None:
        dims = shape[2:4] if args.calib_layout == "NCHW" else shape[1:3]
        if len(dims) != 2 or not all(isinstance(d, int) and d > 0 for d in dims):
            raise ValueError("the model's input size is not fixed: give --calib-size H,W")
        size = list(dims)
    if len(size) != 2:
        raise ValueError(f"--calib-size needs two numbers H,W, got {size}")
    return Calibration.from_images(
        args.calib_images,
        input_name=names[0],
        size=(int(size[0]), int(size[1])),
        scale=args.calib_scale,
        mean=args.calib_mean,
        std=args.calib_std,
        layout=args.calib_layout,
        channels=args.calib_channels,
        limit=args.calib_limit,
    )


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
        show_progress=not args.quiet,
    )
    return encrypt(
        args.model,
        args.output,
        key_file=args.keys,
        options=options,
        calibration=load_calibration(args, args.model),
        passphrase=protect,
        overwrite=args.overwrite,
    )


@contextlib.contextmanager
def _calibration_flags() -> Iterator[None]:
    """Name the command-line flags where the API asks for calibration inputs."""
    try:
        yield
    except ValueError as exc:
        if "need calibration inputs" not in str(exc):
            raise
        raise ValueError(f"{exc}; on the command line: --calib or --calib-images") from None


def cmd_encrypt(args: argparse.Namespace) -> int:
    protect = _passphrase(args, "protect_env", "protect", "new key passphrase: ")
    with _calibration_flags():
        result = _encrypt_from_args(args, protect)
    for u in result.unsupported:
        print(f"warning: not encrypted: {u.node}: {u.reason}", file=sys.stderr)
    print(
        f"encrypted {result.encrypted_weights} of {result.conv_weights} conv weights "
        f"({100 * result.fraction:.3f}%) in {len(result.layers)} tensors, "
        f"{result.levels} levels"
    )
    print("wrote " + ", ".join(str(p) for p in result.model_files))
    report = result.level_report
    if report is not None:
        print(f"levels calibrated to targets ({report.objective}, order: {report.order}):")
        print("  level  target  calibration  held-out")
        for m in range(result.levels + 1):
            target = "-" if m == 0 else f"{report.targets[m - 1]:.2f}"
            held = "-" if report.held_out is None else f"{report.held_out[m]:.3f}"
            print(f"  {m:>5}  {target:>6}  {report.calibration[m]:>11.3f}  {held:>8}")
        if report.held_out is not None:
            verdict = "all within" if report.within(TOLERANCE) else "NOT all within"
            print(
                f"  held-out ({report.held_out_samples} inputs, sampling error "
                f"+-{report.sampling_error():.2f}): {verdict} the tolerance of "
                f"+-{TOLERANCE:.2f}"
            )
    print(f"owner key (level {result.levels}, id {result.key_id}): {result.key_file}")
    return 0


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
        metric=args.metric,
        labels=labels,
        level_targets=args.level_targets,
        level_budget=args.level_budget,
        seed=args.seed,
        show_progress=not args.quiet,
    )
    print(format_table(result, chance=args.chance))
    if args.out:
        for path in write_outputs(
            result, args.out, title=Path(args.model).name, chance=args.chance
        ):
            print(f"wrote {path}")
    return 0


def cmd_export_key(args: argparse.Namespace) -> int:
    passphrase = _key_passphrase(args, args.key_file)
    protect = _passphrase(args, "protect_env", "protect", "new key passphrase: ")
    key = export_key(
        args.key_file,
        args.level,
        args.output,
        passphrase=passphrase,
        new_passphrase=protect,
        overwrite=args.overwrite,
    )
    print(f"wrote level-{key.level} key (id {key.key_id}) to {args.output}")
    return 0


def cmd_keys_info(args: argparse.Namespace) -> int:
    passphrase = _key_passphrase(args, args.key_file)
    info = key_info(read_key_file(args.key_file, passphrase=passphrase))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def _cli_key(args: argparse.Namespace) -> LevelKey:
    """The key named by ``--key FILE`` or ``--key-env VAR``."""
    if args.key_env:
        passphrase = _passphrase(args, "passphrase_env", "ask_passphrase", "key passphrase: ")
        return key_from_env(args.key_env, passphrase=passphrase)
    return read_key_file(args.key, passphrase=_key_passphrase(args, args.key))


def cmd_run(args: argparse.Namespace) -> int:
    session = load_session(
        args.model, key=_cli_key(args), level=args.level, providers=args.providers
    )
    feeds = _feeds(session.get_inputs(), args.input)
    try:
        outputs = session.run(None, feeds)
    except Exception as exc:
        if not _from_onnxruntime(exc):
            raise
        raise ValueError(f"ONNX Runtime could not run the model on these inputs: {exc}") from None
    print(f"providers: {', '.join(session.get_providers())}")
    for meta, value in zip(session.get_outputs(), outputs, strict=True):
        arr = np.asarray(value)
        print(
            f"{meta.name}: shape {list(arr.shape)} dtype {arr.dtype}"
            + (
                f" mean {arr.mean():.6g} std {arr.std():.6g}"
                if arr.size and np.issubdtype(arr.dtype, np.number)
                else ""
            )
        )
    if args.output:
        out = Path(args.output)
        arrays: dict[str, Any] = {
            m.name: np.asarray(v) for m, v in zip(session.get_outputs(), outputs, strict=True)
        }
        np.savez(out, **arrays)
        print(f"wrote {out}")
    return 0


# ONNX Runtime's input types, as ``NodeArg.type`` names them, and their numpy dtypes.
_ORT_DTYPES = {
    f"tensor({name})": np.dtype(dtype)
    for name, dtype in (
        ("float", "float32"), ("double", "float64"), ("float16", "float16"),
        ("int8", "int8"), ("uint8", "uint8"), ("int16", "int16"), ("uint16", "uint16"),
        ("int32", "int32"), ("uint32", "uint32"), ("int64", "int64"), ("uint64", "uint64"),
        ("bool", "bool"),
    )
}  # fmt: skip


def _feeds(inputs: Sequence[Any], specs: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``--input [NAME=]FILE`` names, checked against the model's inputs.

    A ``.npy`` file is one input (NAME may be left out when the model has one); a
    ``.npz`` file gives the inputs its arrays are named after. Checking here turns
    a wrong shape or dtype into one line naming what the model expects.

    Raises:
        ValueError: an unknown or missing input, or an array of the wrong shape or dtype.
        FormatError: a file numpy cannot read as .npy/.npz.
    """
    by_name = {i.name: i for i in inputs}
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name, _, file = spec.rpartition("=")
        arrays = _load_arrays(file)
        if None in arrays:
            if not name:
                if len(inputs) != 1:
                    raise ValueError("the model has several inputs: give --input NAME=FILE.npy")
                name = inputs[0].name
            arrays = {name: arrays[None]}
        elif name:
            raise ValueError(f"{file} names its arrays: give it without {name}=")
        for key, array in arrays.items():
            assert key is not None
            if key not in by_name:
                raise ValueError(
                    f"the model has no input '{key}' (from {file}); its inputs: "
                    + ", ".join(by_name)
                )
            _check_input(by_name[key], array, file)
            feeds[key] = array
    missing = [n for n in by_name if n not in feeds]
    if missing:
        raise ValueError(f"no value for the model's input(s) {', '.join(missing)}: add --input")
    return feeds


def _load_arrays(file: str) -> dict[str | None, np.ndarray]:
    """``{None: array}`` of a .npy file, ``{name: array}`` of a .npz file.

    Raises:
        FormatError: not a file numpy reads (without pickles).
        FileNotFoundError: no such file.
    """
    try:
        with open(file, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    return {k: loaded[k] for k in loaded.files}
            return {None: loaded}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise exceptions.FormatError(f"{file} is not a .npy or .npz file: {exc}") from None


def _check_input(meta: Any, array: np.ndarray, file: str) -> None:
    """Raise ValueError unless ``array`` has the rank, fixed dimensions and dtype of ``meta``."""
    expected = _ORT_DTYPES.get(meta.type)
    shape = list(meta.shape)
    fits_shape = array.ndim == len(shape) and all(
        not isinstance(d, int) or d < 0 or d == n for d, n in zip(shape, array.shape, strict=True)
    )
    if fits_shape and (expected is None or array.dtype == expected):
        return
    dims = ", ".join(str(d) if isinstance(d, int) and d >= 0 else (d or "?") for d in shape)
    dtype = expected.name if expected is not None else meta.type
    raise ValueError(
        f"input '{meta.name}' must have shape [{dims}] and dtype {dtype}; "
        f"{file} holds shape {list(array.shape)} and dtype {array.dtype}"
    )


def _from_onnxruntime(exc: BaseException) -> bool:
    """ONNX Runtime's errors are plain Exception subclasses from its own module."""
    return type(exc).__module__.split(".")[0] == "onnxruntime"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-selenc",
        description="Selective, tiered encryption of ONNX models that still run in ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version=f"onnx-selenc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="conv weights of a model; manifest of an encrypted one")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
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
    p.add_argument("--levels", type=int, default=5, help="number of service levels (default 5)")
    p.add_argument(
        "--budget",
        type=float,
        default=0.01,
        help="fraction of all conv weights to encrypt (balanced), or the per-layer "
        "kernel ratio (uniform); default 0.01",
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
    p.add_argument("--masking", choices=list(MASKINGS), default="empirical")
    p.add_argument("--seed", type=int, help="reproducible selection and masking")
    p.add_argument(
        "--external-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write weights to <output>.data (default: as the input)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--protect-env",
        metavar="VAR",
        help="protect the owner key with the passphrase in this variable",
    )
    p.add_argument(
        "--protect", action="store_true", help="protect the owner key with a passphrase (prompted)"
    )
    add_calibration_args(p)
    p.set_defaults(func=cmd_encrypt)

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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_calibration_args(p)
    p.set_defaults(func=cmd_evaluate)

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
    p.set_defaults(func=cmd_export_key)

    keys = sub.add_parser("keys", help="key file utilities").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys.add_parser("info", help="public facts about a key file (no secrets)")
    p.add_argument("key_file")
    p.add_argument("--json", action="store_true")
    _add_passphrase_args(p)
    p.set_defaults(func=cmd_keys_info)

    p = sub.add_parser("run", help="restore in memory and run once; prints providers used")
    p.add_argument("model")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", help="key file")
    source.add_argument(
        "--key-env", metavar="VAR", help="environment variable holding a key file's path or content"
    )
    p.add_argument("--level", type=int, help="level to restore (default: the key's)")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="[NAME=]FILE.npy",
        help="an input array (NAME= when the model has several inputs), or an "
        ".npz whose arrays are named after the inputs; repeatable",
    )
    p.add_argument("--output", help="save outputs to this .npz")
    p.add_argument("--providers", nargs="+", help="ONNX Runtime providers in order")
    _add_passphrase_args(p)
    p.set_defaults(func=cmd_run)

    from onnx_selenc._cli.deploy import add_deploy_commands

    add_deploy_commands(sub)
    try:
        from onnx_selenc.blockwise._cli import add_blockwise_commands
    except ImportError:  # the blockwise mode is optional at import time
        pass
    else:
        add_blockwise_commands(sub)
    return parser


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnx-selenc`` command."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings the API raises are printed by the commands
        try:
            return int(args.func(args))
        except Exception as exc:
            for kind, code in EXIT_CODES:
                if isinstance(exc, kind):
                    print(f"error: {_describe(exc)}", file=sys.stderr)
                    return code
            if _from_onnxruntime(exc):  # it refused the model or its options: not our bug
                print(f"error: ONNX Runtime: {_describe(exc)}", file=sys.stderr)
                return 1
            raise


def _describe(exc: BaseException) -> str:
    """The error's message on one line (ONNX Runtime's and numpy's may span several)."""
    if isinstance(exc, exceptions.SelencError):
        text = f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])  # str() of a KeyError adds quotes
    else:
        text = str(exc)
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
