"""Argument types and the calibration options shared by the commands."""

from __future__ import annotations

import argparse

from onnx_selenc._onnx.modelio import model_inputs
from onnx_selenc._select.calibration import Calibration


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
