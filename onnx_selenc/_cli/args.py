"""Argument types and the calibration options shared by the commands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import onnx

from onnx_selenc._onnx.modelio import load_model, model_inputs
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
        return fit_to_model(
            Calibration.from_npz(args.calib, input_names=names), model_path, args.calib
        )
    size = args.calib_size
    if size is None:
        dims = shape[2:4] if args.calib_layout == "NCHW" else shape[1:3]
        if len(dims) != 2 or not all(isinstance(d, int) and d > 0 for d in dims):
            raise ValueError("the model's input size is not fixed: give --calib-size H,W")
        size = list(dims)
    if len(size) != 2:
        raise ValueError(f"--calib-size needs two numbers H,W, got {size}")
    images = Calibration.from_images(
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
    return fit_to_model(images, model_path, args.calib_images)


def check_level(level: int | None, levels: object) -> None:
    """Refuse a ``--level`` the model does not have (else: "this key is for level 5;
    level 9 was asked for", as if a better key could grant it).

    Raises:
        ValueError: ``level`` above ``levels`` (a negative one is the API's to refuse).
    """
    if level is not None and isinstance(levels, int) and level > levels:
        raise ValueError(f"the model has levels 0 to {levels}; there is no level {level} (--level)")


def fit_to_model(calibration: Calibration, model_path: str, source: str) -> Calibration:
    """``calibration`` checked against the inputs the model declares, before any forward
    pass: float64 arrays cast to a float input's type (with a note on stderr).

    Raises:
        ValueError: an array whose samples have another rank, a fixed dimension of
            another size, or a dtype the input does not take (ONNX Runtime would
            otherwise refuse it deep in the pipeline with INVALID_ARGUMENT).
    """
    model = load_model(model_path, load_external=False)
    declared = {i.name: i.type.tensor_type for i in model.graph.input}
    feeds: dict[str, np.ndarray] = {}
    for name, array in calibration.feeds.items():
        tensor = declared.get(name)
        if tensor is None or not tensor.elem_type:
            feeds[name] = array  # not a plain tensor input: left to ONNX Runtime
            continue
        expected = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = _dims(tensor)
        # Axis 0 holds the samples: only the dimensions after it are compared.
        fits = dims is None or (
            array.ndim == len(dims)
            and all(d is None or d == n for d, n in zip(dims[1:], array.shape[1:], strict=True))
        )
        if fits and array.dtype == expected:
            feeds[name] = array
        elif fits and array.dtype == np.float64 and np.issubdtype(expected, np.floating):
            print(
                f"note: calibration input {name}: float64 cast to {expected.name}", file=sys.stderr
            )
            feeds[name] = array.astype(expected)
        else:
            shown = "?" if dims is None else ", ".join("N" if d is None else str(d) for d in dims)
            raise ValueError(
                f"calibration array '{name}' of {source} has shape {list(array.shape)} and "
                f"dtype {array.dtype}; the model's input '{name}' takes [{shown}] "
                f"{expected.name} (samples along axis 0)"
            )
    return Calibration(feeds)


def _dims(tensor: Any) -> list[int | None] | None:
    """The declared dimensions (None where not fixed), or None for an undeclared shape."""
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


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
