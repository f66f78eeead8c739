"""``onnx-selenc rekey``: the same model under a fresh owner key (revokes every old key)."""

from __future__ import annotations

import argparse
from typing import Any

from onnx_selenc._cli.output import add_json_flag, emit
from onnx_selenc._cli.passphrase import _add_passphrase_args, _key_passphrase, _passphrase
from onnx_selenc._encrypt.rekey import rekey


def add_rekey_command(sub: Any) -> None:
    """The ``rekey`` sub-command."""
    p = sub.add_parser(
        "rekey",
        help="re-seal a model under a fresh owner key: every old key (owner and tiers) is "
        "refused; the public weights stay byte-identical",
    )
    p.add_argument("model", help="the encrypted model")
    p.add_argument("--key", required=True, metavar="OWNER.key", help="its current owner key")
    p.add_argument("-o", "--output", required=True, help="the rekeyed model (never the input)")
    p.add_argument(
        "--keys", required=True, metavar="NEW-OWNER.key", help="the new owner key file to create"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model at -o")
    _add_passphrase_args(p, new=True)
    add_json_flag(p)
    p.set_defaults(func=cmd_rekey)


def cmd_rekey(args: argparse.Namespace) -> int:
    passphrase = _key_passphrase(args, args.key)
    protect = _passphrase(args, "protect_env", "protect", "new key passphrase: ")
    result = rekey(
        args.model,
        args.output,
        key_file=args.key,
        new_key_file=args.keys,
        passphrase=passphrase,
        new_passphrase=protect,
        overwrite=args.overwrite,
    )
    lines = [
        "wrote " + ", ".join(str(p) for p in result.model_files),
        f"new owner key (level {result.levels}, id {result.key_id}): {result.key_file}; "
        f"every key of id {result.old_key_id} is now refused: export new tier keys",
        f"model digest (the public bytes, unchanged): {result.model_digest}",
    ]
    if not result.signed_input:
        lines.append(
            "the input was unsigned (format 1), so nothing proved it unchanged since you "
            "encrypted it: compare the digest above with the one you recorded then"
        )
    doc = {
        "model_files": [str(p) for p in result.model_files],
        "key_file": str(result.key_file),
        "key_id": result.key_id,
        "old_key_id": result.old_key_id,
        "levels": result.levels,
        "model_digest": result.model_digest,
        "signed_input": result.signed_input,
    }
    return emit(args, doc, lines)
