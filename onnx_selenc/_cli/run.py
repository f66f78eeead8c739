"""``onnx-selenc run``: restore in memory and run once, inputs checked against the model."""

from __future__ import annotations

import argparse
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnx_selenc import exceptions

# Exit codes, one per kind of failure, so scripts can tell them apart.
from onnx_selenc._cli.passphrase import _add_passphrase_args, _key_passphrase, _passphrase
from onnx_selenc._crypto.keys import (
    LevelKey,
    key_from_env,
    read_key_file,
)
from onnx_selenc._load.loader import load_session
from onnx_selenc._onnx.ort_types import ort_dtype


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
    expected = ort_dtype(meta.type)
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


def add_run_command(sub: Any) -> None:
    """The ``run`` sub-command."""
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
