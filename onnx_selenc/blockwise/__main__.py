"""``python -m onnx_selenc.blockwise COMMAND ...`` (same commands as ``onnx-selenc blockwise``)."""

from __future__ import annotations

import sys

from onnx_selenc.blockwise._cli import main

if __name__ == "__main__":
    sys.exit(main())
