"""``onnx-selenc decrypt``: the owner's plain model back on disk, as the file it was."""

from __future__ import annotations

import argparse
from typing import Any

from onnx_selenc._cli.output import add_json_flag, emit, own_warnings, warn
from onnx_selenc._cli.passphrase import _add_passphrase_args, _key_passphrase
from onnx_selenc._load.decrypt import decrypt


def add_decrypt_command(sub: Any) -> None:
    """The ``decrypt`` sub-command."""
    p = sub.add_parser(
        "decrypt",
        help="write the plain model back with the owner key, byte for byte the file that "
        "was encrypted (tier keys never get a file)",
    )
    p.add_argument("model", help="the encrypted model (or a packaged folder)")
    p.add_argument("--key", required=True, metavar="OWNER.key", help="the model's owner key")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="the plain model to write (its external data goes beside it, under the "
        "original's names); never an input, must not exist unless --overwrite",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files at -o and the data file names (never an input or a key)",
    )
    _add_passphrase_args(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_decrypt)


def cmd_decrypt(args: argparse.Namespace) -> int:
    passphrase = _key_passphrase(args, args.key)
    with own_warnings() as warned:
        result = decrypt(
            args.model, args.output, key=args.key, passphrase=passphrase, overwrite=args.overwrite
        )
    for message in warned:
        warn(message)
    lines = [
        "wrote " + ", ".join(str(p) for p in result.model_files),
        f"sha256 {result.sha256}",
        "the original file byte for byte (every file's SHA-256 as recorded at encryption)"
        if result.byte_identical
        else "not the original file's bytes (its weights are): see the warning above",
    ]
    doc = {
        "model_files": [str(p) for p in result.model_files],
        "key_id": result.key_id,
        "sha256": result.sha256,
        "byte_identical": result.byte_identical,
        "problem": result.problem,
        "warnings": warned,
    }
    return emit(args, doc, lines)
