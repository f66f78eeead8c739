"""Deployment commands of the ``onnx-selenc`` CLI: ``package``.

Hooked into the main parser by :func:`add_deploy_commands`; errors are raised and
the main CLI prints them with its exit codes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from onnx_selenc._cli.output import add_json_flag, emit
from onnx_selenc._deploy.package import package
from onnx_selenc._load.loader import resolve_model_path


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
        "--overwrite",
        action="store_true",
        help="replace DIR if an earlier package wrote it (never a folder holding a key file "
        "or a file package did not write)",
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
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="write an MLflow model folder instead (MLmodel, the onnx_selenc package in code/, "
        "this folder's files under artifacts/encrypted_model/): mlflow.pyfunc.load_model(DIR) "
        "and `mlflow models serve -m DIR` serve it with the key in --key-env",
    )
    p.add_argument(
        "--runtime",
        help="with --mlflow: the ONNX Runtime the serving environment installs "
        "(onnxruntime, onnxruntime-gpu, or a requirement line; default onnxruntime)",
    )
    p.add_argument(
        "--key-env",
        metavar="NAME",
        help="with --mlflow: the variable that will hold the key (its path or content) when "
        "served (default ONNX_SELENC_KEY)",
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_package)


def cmd_package(args: argparse.Namespace) -> int:
    """``onnx-selenc package ENC_MODEL -o DIR [--mlflow]``."""
    if args.mlflow:
        return _package_mlflow(args)
    mlflow_only = [f for f, v in (("--runtime", args.runtime), ("--key-env", args.key_env)) if v]
    if mlflow_only:  # a folder without --mlflow has no environment they could go into
        verb = "applies" if len(mlflow_only) == 1 else "apply"
        raise ValueError(f"{' and '.join(mlflow_only)} {verb} only with --mlflow")
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


def _package_mlflow(args: argparse.Namespace) -> int:
    """``package --mlflow``: :func:`onnx_selenc.mlflow.save_model` into DIR."""
    try:
        from onnx_selenc import mlflow as selenc_mlflow
    except ImportError as exc:
        raise ValueError(
            "--mlflow needs MLflow in this environment: pip install -e '.[cpu,mlflow]'"
        ) from exc
    key_env = args.key_env or "ONNX_SELENC_KEY"
    with tempfile.TemporaryDirectory(prefix="onnx-selenc-package-") as tmp:
        # Packaged first, as without --mlflow: only the model and its data are taken,
        # whatever else (key files) sits beside it.
        # package() refuses a plain model (NotEncrypted) and reads the key id and levels.
        staged = package(args.model, Path(tmp) / "model", title=args.title)
        selenc_mlflow.save_model(
            staged.output_dir,
            args.output,
            key_env=key_env,
            runtime=args.runtime or "onnxruntime",
            title=args.title or Path(args.model).stem.removesuffix(".enc"),
            preprocess=args.preprocess,
            id2label=args.id2label,
            overwrite=args.overwrite,
        )
    out = Path(args.output)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    doc = {
        "output_dir": str(out),
        "model_file": str(resolve_model_path(out / "artifacts" / selenc_mlflow.ARTIFACT)),
        "config_file": str(out / "artifacts" / selenc_mlflow.ARTIFACT / "config.json"),
        "files": [str(f) for f in files],
        "key_id": staged.key_id,
        "levels": staged.levels,
    }
    lines = [
        f"saved {staged.levels}-level model (key id {staged.key_id}) as an MLflow "
        f"model in {out} (serve it with the key in ${key_env})"
    ]
    lines += [f"  {f.relative_to(out)}" for f in files if "code" not in f.relative_to(out).parts]
    return emit(args, doc, lines)
