"""``python -m onnx_selenc``: the ``onnx-selenc`` command."""

import sys

from ._cli import main

sys.exit(main())
