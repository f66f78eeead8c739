"""``onnx-selenc blockwise ...`` commands (argparse), also runnable standalone.

The main CLI calls :func:`add_blockwise_commands` on its sub-parsers and then
``args.func(args)``; handlers report through ``_cli.output.emit`` (text, or one JSON
document with ``--json``), return an exit code and raise
:class:`~onnx_selenc.exceptions.SelencError`, ``ValueError`` or ``OSError`` on errors.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from onnx_selenc._cli.output import Parser, add_json_flag, emit, own_warnings, run_command, warn
from onnx_selenc._cli.passphrase import existing_key_file
from onnx_selenc._onnx.files import refuse_overwrite_of_input
from onnx_selenc.blockwise._files import is_image_file, read_array, write_array
from onnx_selenc.blockwise._images import _to_nhwc, decrypt_images, encrypt_images, to_model_input
from onnx_selenc.blockwise._key import BlockKey
from onnx_selenc.blockwise._model import check_key, encrypt_model, model_key_info
from onnx_selenc.exceptions import SelencError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _bits(key: BlockKey) -> str:
    if math.isinf(key.transform_bits):
        return f"{key.key_space_bits:.1f} bits (continuous transform space; 256-bit secret)"
    if key.transform_bits > key.key_space_bits:
        return f"{key.key_space_bits:.1f} bits ({key.transform_bits:.1f} capped by the secret)"
    return f"{key.key_space_bits:.1f} bits"


def _encrypt_model(args: argparse.Namespace) -> int:
    with own_warnings() as warned:
        result = encrypt_model(
            args.model,
            args.output,
            key_out=args.key_out,
            flip=args.flip,
            orthogonal=args.orthogonal,
            scramble=args.scramble,
            pixel_max=args.pixel_max,
            input_mean=args.input_mean,
            input_std=args.input_std,
        )
    for message in warned:
        warn(message)
    stem, key = result.stem, result.key
    transform = key["transform"] + (" + flip" if key["flip"] else "")
    if key["scramble"]:
        transform += f" + block scrambling ({key['grid'][0]}x{key['grid'][1]} grid)"
    lines = [
        f"encrypted model: {result.model_path}",
        f"key file:        {result.key_path} (mode 0600; keep it secret)",
        f"key id:          {result.key_id}",
        f"stem:            Conv '{stem.conv}', {stem.patch}x{stem.patch} patches,"
        f" {stem.channels} channels, {stem.layout}",
        f"transform:       {transform}",
        f"key space:       {_bits(BlockKey.load(result.key_path))}",
    ]
    if result.scrambled_constants:
        lines.append(f"permuted:        {', '.join(result.scrambled_constants)}")
    doc = {
        "model_file": str(result.model_path),
        "key_file": str(result.key_path),
        "key_id": result.key_id,
        "stem": {
            "conv": stem.conv,
            "patch": stem.patch,
            "channels": stem.channels,
            "layout": stem.layout,
        },
        "key": key,  # the public parameters only (BlockKey.public_info)
        "key_space_bits": round(result.key_space_bits, 1),
        "weak": result.weak,
        "scrambled_constants": list(result.scrambled_constants),
        "warnings": warned,
    }
    return emit(args, doc, lines)


def _load_key(args: argparse.Namespace) -> BlockKey:
    key = BlockKey.load(existing_key_file(args.key))
    if args.model is not None:
        check_key(args.model, key)
    return key


def _prepare_output(
    args: argparse.Namespace, arr: np.ndarray, layout: str | None, key: BlockKey, from_image: bool
) -> np.ndarray:
    if is_image_file(args.output):
        view, _ = _to_nhwc(arr, key, layout)
        if view.shape[0] != 1:
            raise ValueError(f"{args.output}: an image file holds one image, got {view.shape[0]}")
        return view[0]
    if getattr(args, "model_input", False):
        return to_model_input(arr, key, layout=layout)
    if from_image:
        view, _ = _to_nhwc(arr, key, layout)
        return view.transpose(0, 3, 1, 2) if key.layout == "NCHW" else view
    return arr


def _images(args: argparse.Namespace, *, decrypt: bool) -> int:
    refuse_overwrite_of_input(args.output, [args.input, args.key])
    key = _load_key(args)
    arr = read_array(args.input, key.channels)
    from_image = is_image_file(args.input)
    layout = "HWC" if from_image else args.layout
    if decrypt:
        out = decrypt_images(arr, key, layout=layout)
    else:
        out = encrypt_images(arr, key, layout=layout)
    out = _prepare_output(args, out, layout, key, from_image)
    write_array(args.output, out)
    verb = "decrypted" if decrypt else "encrypted"
    doc: dict[str, Any] = {
        "input": str(args.input),
        "output": str(args.output),
        "input_shape": list(arr.shape),
        "input_dtype": str(arr.dtype),
        "output_shape": list(out.shape),
        "output_dtype": str(out.dtype),
    }
    text = f"{verb} {list(arr.shape)} {arr.dtype} -> {args.output} {list(out.shape)} {out.dtype}"
    return emit(args, doc, text)


def _encrypt_images(args: argparse.Namespace) -> int:
    return _images(args, decrypt=False)


def _decrypt_images(args: argparse.Namespace) -> int:
    return _images(args, decrypt=True)


def _info(args: argparse.Namespace) -> int:
    path = Path(args.target)
    if path.suffix.lower() == ".onnx":
        info = model_key_info(path)
        if info is None:
            raise SelencError(f"{path}: no block-wise metadata (not block-wise encrypted)")
    else:
        key = BlockKey.load(existing_key_file(str(path)))
        info = key.public_info() | {
            "key_space_bits": round(key.key_space_bits, 1),
            "transform_space_bits": (
                "continuous" if math.isinf(key.transform_bits) else round(key.transform_bits, 1)
            ),
            "weak": key.weak,
        }
    return emit(args, info, json.dumps(info, indent=2, sort_keys=True))  # JSON either way


def _add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help=".npy array or image file (PNG, JPEG, ...)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help=".npy array or lossless image file (.png, .bmp, .tif)",
    )
    p.add_argument("--key", required=True, metavar="KEYFILE", help="block-wise key file")
    p.add_argument(
        "--layout",
        choices=["NCHW", "NHWC", "CHW", "HWC", "HW"],
        default=None,
        help="layout of a .npy input (default: the model's, without N for 3-D)",
    )
    p.add_argument(
        "--model",
        metavar="MODEL",
        default=None,
        help="encrypted model: check that the key was made for it",
    )
    add_json_flag(p)


def add_blockwise_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``blockwise`` command and its sub-commands to ``subparsers``.

    Args:
        subparsers: The main CLI's sub-parser collection.
    """
    top = subparsers.add_parser(
        "blockwise",
        help="block-wise key encryption of patch-embedding models",
        description="Encrypt a patch-embedding model so that it only works on images"
        " encrypted block by block with the same key (see docs/BLOCKWISE.md).",
    )
    sub = top.add_subparsers(dest="blockwise_command", metavar="COMMAND", required=True)

    p = sub.add_parser("encrypt-model", help="encrypt a model and write a new key file")
    p.add_argument("model", metavar="MODEL", help="plain ONNX model")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="encrypted model path")
    p.add_argument("--key-out", required=True, metavar="KEYFILE", help="new key file (0600)")
    p.add_argument("--flip", action="store_true", help="add the keyed negative-positive flip")
    p.add_argument(
        "--orthogonal",
        action="store_true",
        help="keyed orthogonal block transform (continuous key space; real-valued"
        " encrypted images) instead of a pixel permutation",
    )
    p.add_argument(
        "--scramble",
        action="store_true",
        help="also move whole blocks (position-embedding models only)",
    )
    p.add_argument(
        "--pixel-max",
        type=float,
        default=None,
        help="white level of the images (default 1.0, or 255 for uint8 model inputs)",
    )
    p.add_argument(
        "--input-mean",
        type=_floats,
        default=None,
        metavar="M1,M2,...",
        help="the model expects (x - mean) / std computed by the client after"
        " encryption: per-channel mean",
    )
    p.add_argument(
        "--input-std",
        type=_floats,
        default=None,
        metavar="S1,S2,...",
        help="per-channel std to go with --input-mean",
    )
    add_json_flag(p)
    p.set_defaults(func=_encrypt_model)

    p = sub.add_parser("encrypt-images", help="encrypt images with a key (client side)")
    _add_image_args(p)
    p.add_argument(
        "--model-input",
        action="store_true",
        help="write the float32 tensor the model takes (scaled, normalised, batched)",
    )
    p.set_defaults(func=_encrypt_images)

    p = sub.add_parser("decrypt-images", help="decrypt images encrypted with a key")
    _add_image_args(p)
    p.set_defaults(func=_decrypt_images)

    p = sub.add_parser("info", help="show the public data of a key file or encrypted model")
    p.add_argument("target", metavar="KEYFILE|MODEL.onnx")
    add_json_flag(p)  # the output is JSON already: accepted like every command's
    p.set_defaults(func=_info)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m onnx_selenc.blockwise COMMAND ...``).

    Every error this mode raises exits with code 1 (the main CLI's codes are finer);
    ``--json`` reports it as ``{"error", "code", "kind"}`` like the main CLI.

    Returns:
        The exit code.
    """
    parser = Parser(prog="python -m onnx_selenc.blockwise")
    add_blockwise_commands(parser.add_subparsers(dest="command", required=True))
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in ("blockwise", "-h", "--help"):
        args_list = ["blockwise", *args_list]
    codes = [(SelencError, 1), (ValueError, 1), (OSError, 1)]
    return run_command(parser, args_list, codes=codes, kind_in_message=False)
