"""The onnx-selenc command: a thin layer over the Python API."""

from onnx_selenc._cli.commands import main

__all__ = ["main"]
