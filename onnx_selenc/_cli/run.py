"""``onnx-selenc run``: restore in memory and run once, inputs checked against the model."""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnx_selenc import exceptions
from onnx_selenc._cli.output import add_json_flag, emit, from_onnxruntime, warn
from onnx_selenc._cli.passphrase import _add_passphrase_args, _key_passphrase, _passphrase
from onnx_selenc._crypto.keys import (
    LevelKey,
    key_from_env,
    read_key_file,
    refuse_replacing_key_file,
)
from onnx_selenc._load.loader import load_session
from onnx_selenc._onnx.files import (
    atomic_write,
    refuse_existing_outputs,
    refuse_overwrite_of_input,
)
from onnx_selenc._onnx.ort_types import ort_dtype


def _cli_key(args: argparse.Namespace) -> LevelKey:
    """The key named by ``--key FILE`` or ``--key-env VAR``.

    Raises:
        FileNotFoundError: the key file (named or in the variable) does not exist.
    """
    if args.key_env:
        passphrase = _passphrase(args, "passphrase_env", "ask_passphrase", "key passphrase: ")
        try:
            return key_from_env(args.key_env, passphrase=passphrase)
        except FileNotFoundError as exc:  # the variable held a path
            raise FileNotFoundError(
                f"key file {exc.filename} (from ${args.key_env}) does not exist"
            ) from None
    # _key_passphrase checks first that the key file exists.
    return read_key_file(args.key, passphrase=_key_passphrase(args, args.key))


def cmd_run(args: argparse.Namespace) -> int:
    out = _output_path(args)
    if args.providers:
        _check_providers(args.providers)
    key = _cli_key(args)
    session = load_session(args.model, key=key, level=args.level, providers=args.providers)
    if args.providers:
        unavailable = [p for p in args.providers if p not in _ort().get_available_providers()]
        if unavailable:
            warn(
                f"{', '.join(unavailable)} {'is' if len(unavailable) == 1 else 'are'} not "
                f"available in this onnxruntime; the model runs on "
                f"{', '.join(session.get_providers())}"
            )
    notes: list[str] = []
    feeds = _feeds(session.get_inputs(), args.input, notes)
    try:
        outputs = session.run(None, feeds)
    except Exception as exc:
        if not from_onnxruntime(exc):
            raise
        raise ValueError(f"ONNX Runtime could not run the model on these inputs: {exc}") from None
    providers = list(session.get_providers())
    lines = [f"providers: {', '.join(providers)}"]
    described = []
    for meta, value in zip(session.get_outputs(), outputs, strict=True):
        arr = np.asarray(value)
        numeric = bool(arr.size) and np.issubdtype(arr.dtype, np.number)
        described.append(
            {
                "name": meta.name,
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "mean": float(arr.mean()) if numeric else None,
                "std": float(arr.std()) if numeric else None,
            }
        )
        lines.append(
            f"{meta.name}: shape {list(arr.shape)} dtype {arr.dtype}"
            + (f" mean {arr.mean():.6g} std {arr.std():.6g}" if numeric else "")
        )
    if out is not None:
        arrays: dict[str, Any] = {
            m.name: np.asarray(v) for m, v in zip(session.get_outputs(), outputs, strict=True)
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(out, buffer.getvalue())
        lines.append(f"wrote {out}")
    doc = {
        "model": str(args.model),
        "key_id": key.key_id,
        "level": key.level if args.level is None else args.level,
        "levels": key.levels,
        "providers": providers,
        "outputs": described,
        "output_file": None if out is None else str(out),
        "notes": notes,
    }
    return emit(args, doc, lines)


def _output_path(args: argparse.Namespace) -> Path | None:
    """The ``--output`` file, checked before any work: never an existing file without
    ``--overwrite``, never a key file, the model or an input.

    Raises:
        FileExistsError: the file exists (without ``--overwrite``), or is a key file.
        ValueError: the file is the model or an input.
    """
    if not args.output:
        return None
    out = Path(args.output)
    if out.suffix != ".npz":  # np.savez would add it: name the file it writes
        out = out.with_name(out.name + ".npz")
    refuse_existing_outputs([out], overwrite=args.overwrite, how="pass --overwrite to replace it")
    refuse_replacing_key_file(out)
    refuse_overwrite_of_input(out, [args.model, *(s.rpartition("=")[2] for s in args.input)])
    return out


def _check_providers(names: Sequence[str]) -> None:
    """Refuse a provider name ONNX Runtime does not know (it would fall back to the CPU
    with a notice on stdout and exit 0).

    Raises:
        ValueError: a name not in ``onnxruntime.get_all_providers()``.
    """
    ort = _ort()
    unknown = [p for p in names if p not in ort.get_all_providers()]
    if unknown:
        raise ValueError(
            f"unknown ONNX Runtime provider {', '.join(unknown)}; available here: "
            f"{', '.join(ort.get_available_providers())} (all names onnxruntime knows: "
            "python -c 'import onnxruntime; print(onnxruntime.get_all_providers())')"
        )


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def _feeds(
    inputs: Sequence[Any], specs: Sequence[str], notes: list[str] | None = None
) -> dict[str, np.ndarray]:
    """The arrays ``--input [NAME=]FILE`` names, checked against the model's inputs.

    A ``.npy`` file is one input (NAME may be left out when the model has one); a
    ``.npz`` file gives the inputs its arrays are named after. Checking here turns
    a wrong shape or dtype into one line naming what the model expects; float64
    arrays (numpy's default) are cast to a float input's type, with a note.

    Args:
        inputs: the session's inputs (``get_inputs()``).
        specs: the ``--input`` values.
        notes: receives one line per cast (also printed on stderr).

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
                    raise ValueError(
                        "the model has several inputs: give --input NAME=FILE.npy; its inputs: "
                        + _signatures(inputs)
                    )
                name = inputs[0].name
            arrays = {name: arrays[None]}
        elif name:
            raise ValueError(f"{file} names its arrays: give it without {name}=")
        for key, array in arrays.items():
            assert key is not None
            if key not in by_name:
                raise ValueError(
                    f"the model has no input '{key}' (from {file}); its inputs: "
                    + _signatures(inputs)
                )
            feeds[key] = _check_input(by_name[key], array, file, notes)
    missing = [by_name[n] for n in by_name if n not in feeds]
    if missing:
        raise ValueError(
            f"no value for the model's input(s) {_signatures(missing)}: add --input "
            + " ".join(f"{m.name}=FILE.npy" for m in missing)
        )
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
        if "pickle" in str(exc):  # numpy's advice to unpickle is not the CLI's to give
            raise exceptions.FormatError(
                f"{file} is not a .npy or .npz file of arrays (np.save / np.savez write them)"
            ) from None
        raise exceptions.FormatError(f"{file} is not a .npy or .npz file: {exc}") from None


def _check_input(
    meta: Any, array: np.ndarray, file: str, notes: list[str] | None = None
) -> np.ndarray:
    """``array`` as the input ``meta`` takes it: float64 cast to a float input's type.

    Raises:
        ValueError: the rank, a fixed dimension or the dtype does not fit ``meta``.
    """
    expected = ort_dtype(meta.type)
    shape = list(meta.shape or [])
    # ONNX Runtime shows an input of unknown rank as [], like a scalar: left to it.
    fits_shape = not shape or (
        array.ndim == len(shape)
        and all(
            not isinstance(d, int) or d < 0 or d == n
            for d, n in zip(shape, array.shape, strict=True)
        )
    )
    if fits_shape and (expected is None or array.dtype == expected):
        return array
    if fits_shape and expected is not None and _float64_to_float(array.dtype, expected):
        note = f"input {meta.name}: float64 cast to {expected.name} (from {file})"
        print(f"note: {note}", file=sys.stderr)
        if notes is not None:
            notes.append(note)
        return array.astype(expected)
    raise ValueError(
        f"input '{meta.name}' must have shape {_shape(meta)} and dtype {_dtype(meta)}; "
        f"{file} holds shape {list(array.shape)} and dtype {array.dtype}"
    )


def _float64_to_float(given: np.dtype[Any], expected: np.dtype[Any]) -> bool:
    # np.save of a Python float array is float64; the model's float type is what was meant.
    return given == np.float64 and np.issubdtype(expected, np.floating)


def _shape(meta: Any) -> str:
    dims = [str(d) if isinstance(d, int) and d >= 0 else (d or "?") for d in meta.shape or []]
    return f"[{', '.join(dims)}]"


def _dtype(meta: Any) -> str:
    expected = ort_dtype(meta.type)
    return expected.name if expected is not None else str(meta.type)


def _signatures(inputs: Sequence[Any]) -> str:
    """``name [shape] dtype`` of each input, for the messages that name what is expected."""
    return ", ".join(f"{i.name} {_shape(i)} {_dtype(i)}" for i in inputs)


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
    p.add_argument("--output", help="save outputs to this .npz (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument(
        "--providers",
        nargs="+",
        help="ONNX Runtime providers in order (an unknown name is an error; one this "
        "onnxruntime lacks, a warning)",
    )
    _add_passphrase_args(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_run)
