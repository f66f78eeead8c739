"""Issue 24.5: the MLflow flavour's save and load say only what matters, and describe()
reports the providers a load really asks for.

Before, every save printed MLflow's CloudPickle warning (the model was pickled) and two
``Unsupported type hint`` lines (``predict``'s hints did not resolve at run time), and a
model saved for ``onnxruntime-gpu`` described itself as requesting only the CPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

mlflow = pytest.importorskip("mlflow")

import onnx_selenc as se  # noqa: E402
from onnx_selenc import mlflow as om  # noqa: E402
from tests import tiny_models  # noqa: E402

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An encrypted tiny CNN (alone in its folder) and its owner key."""
    tmp = tmp_path_factory.mktemp("quiet")
    (tmp / "model").mkdir()
    onnx.save(tiny_models.cnn(), tmp / "plain.onnx")
    options = se.EncryptOptions(levels=3, budget=0.2, seed=0)
    plain, enc, owner = tmp / "plain.onnx", tmp / "model" / "m.enc.onnx", tmp / "owner.key"
    se.encrypt(plain, enc, key_file=owner, options=options)
    return enc, owner


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def mlflow_log() -> Iterator[list[str]]:
    """Every message MLflow's loggers emit while the test runs, INFO and up."""
    handler, logger = _Records(), logging.getLogger("mlflow")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_save_and_load_log_no_pickle_or_type_hint_lines(
    encrypted, tmp_path, monkeypatch, mlflow_log, capfd
) -> None:
    model, owner = encrypted
    folder = tmp_path / "saved"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        om.save_model(model, folder)
        monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(owner))
        loaded = mlflow.pyfunc.load_model(str(folder))
    assert loaded.unwrap_python_model().describe()["level"] == 3
    said = [*mlflow_log, *(str(w.message) for w in caught), capfd.readouterr().err]
    for text in said:
        assert "CloudPickle" not in text, text
        assert "Unsupported type hint" not in text, text
        assert "input example was not provided" not in text, text
    assert not list(folder.rglob("*.pkl"))  # nothing pickled: the model is loaded from code


def test_describe_names_the_providers_a_gpu_runtime_asks_for(
    encrypted, tmp_path, monkeypatch
) -> None:
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        pytest.skip("CUDA is available here: the CPU fallback cannot be staged")
    model, owner = encrypted
    folder = tmp_path / "gpu"
    om.save_model(model, folder, runtime="onnxruntime-gpu")
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(owner))
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider was asked for"):
        loaded = mlflow.pyfunc.load_model(str(folder))
    facts = loaded.unwrap_python_model().describe()
    assert facts["requested_providers"] == [CUDA, CPU]
    assert facts["cuda_requested"] and not facts["cuda_running"]
    assert facts["providers"] == [CPU]
