"""A small CNN built with spox (producer ``spox``), weights as Constant nodes.

spox writes every ``op.constant`` as a ``Constant`` node whose output is named by spox's
own scheme and whose value tensor keeps (or lacks) its own name. Variant ``cnn``:
conv stem, depthwise conv, 1x1 conv, global pooling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samples.exporters._tiny import cli


def cnn(out: Path) -> None:
    import onnx
    import spox.opset.ai.onnx.v17 as op
    from spox import Tensor, argument, build

    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    x = argument(Tensor(np.float32, ("N", 3, 32, 32)))
    h = op.relu(op.conv(x, op.constant(value=w(8, 3, 3, 3)), op.constant(value=w(8) * 0.1),
                        pads=[1, 1, 1, 1]))  # fmt: skip
    h = op.relu(op.conv(h, op.constant(value=w(8, 1, 3, 3)), group=8, pads=[1, 1, 1, 1]))
    h = op.conv(h, op.constant(value=w(12, 8, 1, 1)))
    y = op.global_average_pool(h)
    model = build(inputs={"image": x}, outputs={"features": y})
    onnx.save(model, str(out))


if __name__ == "__main__":
    raise SystemExit(cli({"cnn": cnn}))
