"""``python -m onnx_selenc``: the ``onnx-selenc`` command."""

import sys

from onnx_selenc._cli.commands import main

sys.exit(main())
