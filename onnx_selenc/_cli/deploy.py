"""Deployment commands of the ``onnx-selenc`` CLI: ``package``.

Hooked into the main parser by :func:`add_deploy_commands`; errors are raised and
the main CLI prints them with its exit codes.
"""

from __future__ import annotations

import argparse
from typing import Any

from onnx_selenc._cli.output import add_json_flag, emit
from onnx_selenc._deploy.package import package


def add_deploy_commands(subparsers: Any) -> None:
    """Add ``package`` to the CLI's subcommands.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.

    Example:
        >>> parser = argparse.ArgumentParser(prog="onnx-selenc")
        >>> add_deploy_commands(parser.add_subparsers(dest="command", required=True))
    """
    p = subparsers.add_parser(
        "package",
        help="write an encrypted model as a Hugging Face-style folder (onnx/, config, card)",
        description="Lay an encrypted model out like a Hugging Face ONNX repository: "
        "onnx/model.onnx (external data beside it), config.json (inputs, outputs, labels, "
        "levels, key id), preprocessor_config.json (with --preprocess), manifest.json "
        "(public) and a README.md model card. Key files are never copied. The folder is built "
        "beside DIR and renamed into place.",
    )
    p.add_argument("model", metavar="ENC_MODEL", help="encrypted .onnx or a packaged folder")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to create")
    p.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it exists and is not empty"
    )
    p.add_argument("--title", help="heading of the README model card")
    p.add_argument(
        "--preprocess",
        metavar="FILE.json",
        help="the preprocessing the model expects (a JSON object), copied as "
        "preprocessor_config.json",
    )
    p.add_argument(
        "--id2label",
        metavar="FILE.json",
        help="class labels for config.json: a JSON list, or an object of index -> label "
        "(default: labels the model carries in its metadata, such as YOLO's names)",
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_package)


def cmd_package(args: argparse.Namespace) -> int:
    """``onnx-selenc package ENC_MODEL -o DIR``."""
    result = package(
        args.model,
        args.output,
        overwrite=args.overwrite,
        title=args.title,
        preprocess=args.preprocess,
        id2label=args.id2label,
    )
    doc = {
        "output_dir": str(result.output_dir),
        "model_file": str(result.model_file),
        "config_file": str(result.config_file),
        "files": [str(f) for f in result.files],
        "key_id": result.key_id,
        "levels": result.levels,
    }
    lines = [
        f"packaged {result.levels}-level model (key id {result.key_id}) in {result.output_dir}"
    ]
    lines += [f"  {f.relative_to(result.output_dir)}" for f in result.files]
    return emit(args, doc, lines)
