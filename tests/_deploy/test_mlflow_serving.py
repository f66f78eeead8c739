"""MLflow model folders (save_model): what they carry, what they say at load, what predict returns.

A single-output and a multi-output encrypted model are saved once per module as plain
MLflow model folders (no tracking store) and loaded with tier keys. The slow tests run
the ``mlflow models predict`` CLI on both folders.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

mlflow = pytest.importorskip("mlflow")

import onnx_selenc  # noqa: E402
from onnx_selenc import mlflow as om  # noqa: E402
from onnx_selenc._deploy import environment  # noqa: E402
from onnx_selenc.exceptions import LevelNotGranted, UnsafeSessionOptions  # noqa: E402
from tests import tiny_models  # noqa: E402

CPU = ["CPUExecutionProvider"]
TITLE = "tiny-cnn"


def multi_output(seed: int = 0) -> onnx.ModelProto:
    """The tiny CNN with a second output: the arg-max class of each sample (int64, [N])."""
    model = tiny_models.cnn(seed)
    model.graph.node.append(helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]))
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class Saved:
    single: Path  # MLflow model folder of the single-output model
    multi: Path  # ... of the two-output model
    single_pkg: Path  # the encrypted models (packaged), for reference sessions
    multi_pkg: Path
    owner: Path
    multi_owner: Path
    tier1: Path
    multi_tier1: Path
    x: np.ndarray


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    tmp = tmp_path_factory.mktemp("mlflow-folders")
    work, secrets = tmp / "work", tmp / "secrets"
    work.mkdir()
    secrets.mkdir()
    paths = {}
    for name, model in (("single", tiny_models.cnn()), ("multi", multi_output())):
        onnx.save(model, work / f"{name}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_selenc.encrypt(
                work / f"{name}.onnx",
                work / f"{name}.enc.onnx",
                key_file=secrets / f"{name}-owner.key",
                levels=3,
                budget=0.3,
                seed=0,
            )
        onnx_selenc.export_key(secrets / f"{name}-owner.key", 1, secrets / f"{name}-tier1.key")
        pkg = onnx_selenc.package(work / f"{name}.enc.onnx", work / f"{name}-pkg").output_dir
        folder = tmp / f"{name}-model"
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv(om.DEFAULT_KEY_ENV, raising=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # no key here: the example is not validated
                om.save_model(pkg, folder, title=TITLE if name == "single" else None)
        paths[name] = (folder, pkg)
    yield Saved(
        single=paths["single"][0],
        multi=paths["multi"][0],
        single_pkg=paths["single"][1],
        multi_pkg=paths["multi"][1],
        owner=secrets / "single-owner.key",
        multi_owner=secrets / "multi-owner.key",
        tier1=secrets / "single-tier1.key",
        multi_tier1=secrets / "multi-tier1.key",
        x=tiny_models.feeds(tiny_models.cnn())["x"],
    )


def _reference(pkg: Path, key: Path, x: np.ndarray) -> list[np.ndarray]:
    sess = onnx_selenc.load_session(pkg, key=key, providers=CPU)
    return sess.run(None, {"x": x})


def test_saved_folder_is_self_contained(saved: Saved) -> None:
    reqs = (saved.single / "requirements.txt").read_text().split()
    names = {r.split("==")[0].split(">=")[0] for r in reqs}
    assert "onnx-selenc" not in names  # not on any index: the model carries it instead
    assert {"mlflow", "onnx", "numpy", "cryptography", "onnxruntime"} <= names
    assert "onnxruntime-gpu" not in names  # the default runtime is the CPU one
    assert f"onnx=={onnx.__version__}" in reqs
    conf = json.loads(json.dumps(mlflow.models.Model.load(saved.single).flavors["python_function"]))
    assert conf["code"] == "code"
    carried = saved.single / "code" / "onnx_selenc"
    assert (carried / "__init__.py").is_file() and (carried / "_deploy" / "pyfunc.py").is_file()
    assert not list(carried.rglob("__pycache__"))


def test_requirements_name_the_runtime_asked_for(tmp_path: Path, saved: Saved) -> None:
    import importlib.metadata

    installed = importlib.metadata.version("onnxruntime")
    assert f"onnxruntime=={installed}" in om.default_requirements()
    assert om.default_requirements("onnxruntime-gpu==1.20.1")[-1] == "onnxruntime-gpu==1.20.1"
    assert not [r for r in om.default_requirements(None) if r.startswith("onnxruntime")]
    try:
        gpu = f"onnxruntime-gpu=={importlib.metadata.version('onnxruntime-gpu')}"
    except importlib.metadata.PackageNotFoundError:
        gpu = f"onnxruntime-gpu>={environment.RUNTIME_FLOOR}"  # not installed where logged
    assert om.default_requirements("onnxruntime-gpu")[-1] == gpu
    with pytest.raises(ValueError, match="ONNX Runtime distribution"):
        om.default_requirements("torch")
    with pytest.raises(ValueError, match="requirement"):
        om.default_requirements("onnxruntime gpu!")

    folder = tmp_path / "gpu-model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        om.save_model(saved.single_pkg, folder, runtime="onnxruntime-gpu")
    reqs = (folder / "requirements.txt").read_text().split()
    assert gpu in reqs
    assert not [r for r in reqs if r.startswith("onnxruntime==")]


def test_folder_loads_with_mlflow_and_describes_itself(
    saved: Saved, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(saved.tier1))
    with caplog.at_level(logging.INFO, logger="onnx_selenc.mlflow"):
        model = mlflow.pyfunc.load_model(str(saved.single))
    (y,) = _reference(saved.single_pkg, saved.tier1, saved.x)
    np.testing.assert_array_equal(model.predict(saved.x), y)

    key = onnx_selenc.read_key_file(saved.tier1)
    facts = model.unwrap_python_model().describe()
    json.dumps(facts)  # a plain, JSON-able dict
    assert facts["title"] == TITLE
    assert (facts["key_id"], facts["level"], facts["levels"]) == (key.key_id, 1, 3)
    assert facts["providers"] == ["CPUExecutionProvider"]
    assert facts["cuda_running"] is False
    assert [i["name"] for i in facts["inputs"]] == ["x"]
    assert [o["name"] for o in facts["outputs"]] == ["y"]

    lines = [r for r in caplog.records if r.name == "onnx_selenc.mlflow"]
    assert [r.levelno for r in lines] == [logging.INFO]
    text = lines[0].getMessage()
    for part in (TITLE, key.key_id, "level 1/3", "CPUExecutionProvider"):
        assert part in text


def test_cuda_asked_for_but_not_running_is_a_warning(
    saved: Saved, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here: the degraded case cannot be staged")
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(saved.tier1))
    with (
        caplog.at_level(logging.INFO, logger="onnx_selenc.mlflow"),
        pytest.warns(RuntimeWarning, match="CUDAExecutionProvider was asked for"),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
        model = om.load_model(str(saved.single), providers=["CUDAExecutionProvider", *CPU])
    facts = model.unwrap_python_model().describe()
    assert facts["cuda_requested"] and not facts["cuda_running"]
    assert facts["requested_providers"] == ["CUDAExecutionProvider", *CPU]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and "onnxruntime-gpu" in warned[0].getMessage()

    # Logged for onnxruntime-gpu, default providers: CUDA was meant, so it warns too.
    folder = tmp_path / "gpu-model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        om.save_model(saved.single_pkg, folder, runtime="onnxruntime-gpu")
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider was asked for"):
        mlflow.pyfunc.load_model(str(folder))
    # CPU named explicitly: nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        om.load_model(str(folder), providers=CPU)


def test_level_in_the_config_is_a_minimum_level_guard(
    saved: Saved, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(saved.tier1))
    with pytest.raises(LevelNotGranted):
        mlflow.pyfunc.load_model(str(saved.single), model_config={"level": 2})
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", json.dumps({"level": 3}))
    with pytest.raises(LevelNotGranted):
        mlflow.pyfunc.load_model(str(saved.single))
    monkeypatch.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG")
    owner = om.load_model(str(saved.single), key_file=saved.owner, level=1)
    assert owner.unwrap_python_model().describe()["level"] == 1
    (y,) = _reference(saved.single_pkg, saved.tier1, saved.x)
    np.testing.assert_array_equal(owner.predict(saved.x), y)


def test_allow_options_passes_through(
    saved: Saved, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(saved.tier1))
    vouched = [["CPUExecutionProvider", {"site_tuning_profile": "a"}]]  # unknown to the check
    with pytest.raises(UnsafeSessionOptions, match="site_tuning_profile"):
        mlflow.pyfunc.load_model(str(saved.single), model_config={"providers": vouched})
    model = om.load_model(
        str(saved.single),
        providers=[("CPUExecutionProvider", {"site_tuning_profile": "a"})],
        allow_options=["site_tuning_profile"],
    )
    (y,) = _reference(saved.single_pkg, saved.tier1, saved.x)
    np.testing.assert_array_equal(model.predict(saved.x), y)

    # Saved with the option and the vouching: serving needs no code.
    folder = tmp_path / "vouched"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        om.save_model(
            saved.single_pkg,
            folder,
            providers=[("CPUExecutionProvider", {"site_tuning_profile": "a"})],
            allow_options=["site_tuning_profile"],
        )
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(str(folder)).predict(saved.x), y)
    # Vouching never covers an option known to write the model to disk.
    with pytest.raises(UnsafeSessionOptions):
        om.load_model(
            str(folder),
            providers=[("TensorrtExecutionProvider", {"trt_dump_subgraphs": "1"})],
            allow_options=["trt_dump_subgraphs"],
        )
    with pytest.raises(ValueError, match="provider name or"):
        om.save_model(saved.single_pkg, tmp_path / "bad", providers=[42])  # type: ignore[list-item]


def test_predict_returns_an_array_for_one_output_and_a_dict_for_several(
    saved: Saved, monkeypatch: pytest.MonkeyPatch
) -> None:
    pd = pytest.importorskip("pandas")
    x = saved.x
    frame = pd.DataFrame({"x": [s.ravel().tolist() for s in x]})
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(saved.tier1))
    single = mlflow.pyfunc.load_model(str(saved.single))
    (y,) = _reference(saved.single_pkg, saved.tier1, x)
    for given in (x, {"x": x}, frame):
        out = single.predict(given)
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, y)

    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(saved.multi_tier1))
    multi = mlflow.pyfunc.load_model(str(saved.multi))
    y2, label = _reference(saved.multi_pkg, saved.multi_tier1, x)
    for given in (x, {"x": x}, frame):
        out = multi.predict(given)
        assert list(out) == ["y", "label"]
        np.testing.assert_array_equal(out["y"], y2)
        np.testing.assert_array_equal(out["label"], label)
        assert out["label"].dtype == np.int64

    # The output signature: one column per output, one sample per row.
    outputs = mlflow.models.Model.load(saved.multi).signature.outputs.to_dict()
    assert [(o["name"], o["type"]) for o in outputs] == [("y", "array"), ("label", "long")]
    assert outputs[0]["items"] == {"type": "float"}


def _cli_predict(folder: Path, key: Path, request: dict, tmp_path: Path) -> tuple[object, str]:
    request_file = tmp_path / f"{folder.name}-request.json"
    request_file.write_text(json.dumps(request))
    out = tmp_path / f"{folder.name}-out.json"
    env = {**os.environ, om.DEFAULT_KEY_ENV: str(key), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_PYFUNC_INFERENCE_CONFIG", None)
    args = ["-m", str(folder), "-i", str(request_file), "-t", "json", "-o", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "predict", *args, "--env-manager", "local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())["predictions"], done.stderr


@pytest.mark.slow
def test_mlflow_models_predict_cli_on_one_and_two_outputs(saved: Saved, tmp_path: Path) -> None:
    x = saved.x
    request = {"inputs": {"x": x.tolist()}}
    predictions, stderr = _cli_predict(saved.single, saved.tier1, request, tmp_path)
    (y,) = _reference(saved.single_pkg, saved.tier1, x)
    np.testing.assert_array_equal(np.asarray(predictions, dtype=np.float32), y)
    key_id = onnx_selenc.read_key_file(saved.tier1).key_id
    assert f"key id {key_id}, level 1/3" in stderr  # the INFO line reaches the CLI's log

    frame = {"dataframe_split": {"columns": ["x"], "data": [[s.ravel().tolist()] for s in x]}}
    predictions, _ = _cli_predict(saved.multi, saved.multi_tier1, frame, tmp_path)
    y2, label = _reference(saved.multi_pkg, saved.multi_tier1, x)
    assert isinstance(predictions, dict) and list(predictions) == ["y", "label"]
    np.testing.assert_array_equal(np.asarray(predictions["y"], dtype=np.float32), y2)
    np.testing.assert_array_equal(np.asarray(predictions["label"]), label)
