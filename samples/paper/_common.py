"""Helpers shared by the paper's sample models: config hashing, seeding, ONNX export and checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

META_FILE = "meta.json"

# On a shared CPU, OpenMP threads that spin-wait for a descheduled sibling made DnCNN
# steps 3-4x slower; passive waiting keeps 2 threads useful when others load the cores.
# (Only effective if set before torch starts its thread pool, hence at import time.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def config_hash(config: Mapping[str, Any]) -> str:
    """Short, stable hash of a JSON-able training config (the cache key).

    Args:
        config: plain data (numbers, strings, lists, dicts).

    Returns:
        The first 12 hex digits of the SHA-256 of the canonical JSON.
    """
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def setup_torch(threads: int | None, seed: int) -> None:
    """Seed torch and set its CPU threading for a reproducible run.

    Args:
        threads: ``torch.set_num_threads`` value; ``None`` keeps the current one.
        seed: the global torch seed.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    # Deep nets without BN produce denormals late in training; flushing them made
    # no-BN steps 2.4x faster on this CPU.
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same folder + ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON file, or ``None`` if it is missing or unreadable (an incomplete cache)."""
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_torch_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temp file so an interrupted run never leaves a torn checkpoint."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, deprecation warnings)."""
    logger = logging.getLogger("torch.onnx")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(old)


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    external_data: bool,
    dynamic_axes: Sequence[int] = (0,),
    input_name: str = "input",
    output_name: str = "output",
) -> list[Path]:
    """Export a module with the dynamo exporter, atomically (all files appear or none).

    Args:
        model: the module, in eval mode.
        example: an example input batch.
        path: the ``.onnx`` file to write.
        external_data: write the weights to ``<path>.data`` beside it.
        dynamic_axes: input axes left symbolic (batch, and H/W for the denoisers).
        input_name: the graph input's name.
        output_name: the graph output's name.

    Returns:
        The files written (the model, then its external data if any).
    """
    import torch

    dims = {axis: torch.export.Dim.DYNAMIC for axis in dynamic_axes}
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent))
    try:
        with quiet_export(), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(staging / path.name),
                dynamo=True,
                external_data=external_data,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=(dims,),
                verbose=False,
            )
        written = []
        # The exporter names the data file after the model; moving both keeps the reference.
        for produced in sorted(staging.iterdir(), key=lambda p: p.suffix != ".onnx"):
            target = path.parent / produced.name
            os.replace(produced, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ort_session(path: str | os.PathLike[str] | bytes, threads: int = 0) -> ort.InferenceSession:
    """A quiet CPU ONNX Runtime session for a model file (or serialized bytes).

    Args:
        path: the ``.onnx`` file (external data is read from beside it) or model bytes.
        threads: intra-op threads; 0 lets ONNX Runtime choose.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_session(sess: ort.InferenceSession, x: np.ndarray, batch: int = 250) -> np.ndarray:
    """Run a single-input, single-output session over ``x`` in batches."""
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs, axis=0)


def torch_forward(model: torch.nn.Module, x: np.ndarray, batch: int = 250) -> np.ndarray:
    """Eval-mode forward pass of ``model`` over a numpy batch, in chunks."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).numpy())
    return np.concatenate(outs, axis=0)


def progress(
    iterable: Iterable[Any], *, desc: str, total: int | None = None, enabled: bool = True
) -> Iterable[Any]:
    """A tqdm bar on stderr (or the bare iterable when tqdm is missing or disabled)."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a convenience only
        return iterable
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0,
        leave=False,
    )


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers (recorded next to each result)."""
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
