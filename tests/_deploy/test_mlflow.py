"""MLflow flavour against a real local store (sqlite tracking + registry, local artifacts).

One store per module (creating MLflow's tables takes seconds): an encrypted model with
external data is logged and registered once, with a passphrase-protected key and its
passphrase in this process's environment (MLflow tries the input example at log time),
then loaded back by ``models:/<name>/<version>`` with keys of several tiers.
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

mlflow = pytest.importorskip("mlflow")

import onnx_selenc  # noqa: E402
from onnx_selenc import mlflow as om  # noqa: E402
from onnx_selenc._crypto.keys import write_key_file  # noqa: E402
from onnx_selenc._deploy.package import package as package_model  # noqa: E402
from onnx_selenc._encrypt.files import encrypt_model  # noqa: E402
from onnx_selenc.exceptions import (  # noqa: E402
    KeyFileError,
    KeyMismatch,
    LevelNotGranted,
    NotEncrypted,
)
from tests import tiny_models  # noqa: E402
from tests.conftest import ort_run  # noqa: E402

CPU = ["CPUExecutionProvider"]
NAME = "tiny-cnn-enc"
PASSPHRASE = "correct horse battery staple 7f3a"


@dataclass(frozen=True)
class Store:
    root: Path  # everything MLflow wrote: sqlite DB, artifacts
    uri: str  # models:/NAME/VERSION
    info: mlflow.models.model.ModelInfo
    package: Path
    owner: Path
    tier1: Path
    tier2: Path  # passphrase-protected
    other: Path  # the owner key of another model
    x: np.ndarray
    plain_y: np.ndarray
    log_text: str  # every log record and warning emitted while logging


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter().format(record))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    tmp = tmp_path_factory.mktemp("mlflow")
    root, work, secrets = tmp / "store", tmp / "work", tmp / "secrets"
    for d in (root, work, secrets):
        d.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        db = f"sqlite:///{root / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", db)
        mp.setenv("MLFLOW_REGISTRY_URI", db)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("DO_NOT_TRACK", "true")
        mp.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", raising=False)
        mp.delenv(om.DEFAULT_KEY_ENV, raising=False)
        mp.delenv(om.DEFAULT_PASSPHRASE_ENV, raising=False)
        mp.chdir(root)  # anything MLflow drops in the working folder is scanned too

        plain = tiny_models.cnn()
        onnx.save(plain, work / "plain.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_selenc.encrypt(
                work / "plain.onnx",
                work / "cnn.enc.onnx",
                key_file=secrets / "owner.key",
                levels=3,
                budget=0.3,
                seed=0,
                external_data=True,
            )
            other = encrypt_model(tiny_models.cnn(seed=1), levels=3, budget=0.3, seed=0)
        write_key_file(secrets / "other.key", other.owner_key)
        onnx_selenc.export_key(secrets / "owner.key", 1, secrets / "tier1.key")
        onnx_selenc.export_key(
            secrets / "owner.key", 2, secrets / "tier2.key", new_passphrase=PASSPHRASE
        )
        package = package_model(work / "cnn.enc.onnx", work / "pkg").output_dir
        x = tiny_models.feeds(plain)["x"]

        experiment = mlflow.create_experiment("selenc", artifact_location=(root / "art").as_uri())
        records = _Records()
        loggers = [logging.getLogger(), logging.getLogger("mlflow")]
        for lg in loggers:
            lg.addHandler(records)
        # The worst case for leaks: key content and passphrase in the logging environment.
        mp.setenv(om.DEFAULT_KEY_ENV, (secrets / "tier2.key").read_text())
        mp.setenv(om.DEFAULT_PASSPHRASE_ENV, PASSPHRASE)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with mlflow.start_run(experiment_id=experiment):
                    mlflow.log_param("purpose", "onnx-selenc test")
                    info = om.log_model(
                        package,
                        "model",
                        input_example={"x": x},
                        registered_model_name=NAME,
                    )
        finally:
            for lg in loggers:
                lg.removeHandler(records)
            mp.delenv(om.DEFAULT_KEY_ENV)
            mp.delenv(om.DEFAULT_PASSPHRASE_ENV)
        log_text = "\n".join(records.lines + [str(w.message) for w in caught])
        assert info.registered_model_version is not None
        yield Store(
            root=root,
            uri=f"models:/{NAME}/{info.registered_model_version}",
            info=info,
            package=package,
            owner=secrets / "owner.key",
            tier1=secrets / "tier1.key",
            tier2=secrets / "tier2.key",
            other=secrets / "other.key",
            x=x,
            plain_y=ort_run(plain, {"x": x})[0],
            log_text=log_text,
        )


def _reference(store: Store, key: Path, *, passphrase: str | None = None) -> np.ndarray:
    sess = onnx_selenc.load_session(store.package, key=key, passphrase=passphrase, providers=CPU)
    return sess.run(None, {"x": store.x})[0]


def test_registry_model_matches_load_session_at_two_tiers(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(store.tier1))  # a key file's path
    tier1 = om.load_model(store.uri, providers=CPU).predict(store.x)
    np.testing.assert_array_equal(tier1, _reference(store, store.tier1))

    # MLflow's own loader, the key's content in the variable, its passphrase in another.
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, store.tier2.read_text())
    monkeypatch.setenv(om.DEFAULT_PASSPHRASE_ENV, PASSPHRASE)
    tier2 = mlflow.pyfunc.load_model(store.uri).predict({"x": store.x})
    np.testing.assert_array_equal(tier2, _reference(store, store.tier2, passphrase=PASSPHRASE))
    assert not np.allclose(tier1, tier2)

    # The owner's tier is the original model: not garbage.
    owner = om.load_model(store.uri, key_file=store.owner).predict(store.x)
    np.testing.assert_allclose(owner, store.plain_y, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tier1, store.plain_y)


def test_level_and_key_file_configuration(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, store.other.read_text())  # ignored below
    lowered = om.load_model(store.uri, key_file=store.owner, level=1).predict(store.x)
    np.testing.assert_array_equal(lowered, _reference(store, store.tier1))
    with pytest.raises(LevelNotGranted):
        om.load_model(store.uri, key_file=store.tier1, level=3)

    # Serving without code: MLflow's inference-config variable names a mounted key file.
    monkeypatch.setenv(
        "MLFLOW_PYFUNC_INFERENCE_CONFIG",
        json.dumps({"key_file": str(store.tier1), "key_env": None}),
    )
    served = mlflow.pyfunc.load_model(store.uri).predict(store.x)
    np.testing.assert_array_equal(served, _reference(store, store.tier1))


def test_no_key_or_a_wrong_key_fails_clearly(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(om.KeyNotConfigured, match=om.DEFAULT_KEY_ENV):
        om.load_model(store.uri)
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(store.root / "missing.key"))
    with pytest.raises(om.KeyNotConfigured, match=f"\\${om.DEFAULT_KEY_ENV} names the key file"):
        om.load_model(store.uri)
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, store.other.read_text())
    with pytest.raises(KeyMismatch, match="belongs to another model"):
        mlflow.pyfunc.load_model(store.uri)
    monkeypatch.setenv(om.DEFAULT_KEY_ENV, str(store.tier2))
    with pytest.raises(KeyFileError, match=om.DEFAULT_PASSPHRASE_ENV):
        om.load_model(store.uri)
    monkeypatch.setenv(om.DEFAULT_PASSPHRASE_ENV, "wrong passphrase")
    with pytest.raises(KeyFileError):
        om.load_model(store.uri)
    monkeypatch.delenv(om.DEFAULT_KEY_ENV)
    with pytest.raises(om.KeyNotConfigured, match="does not exist"):
        om.load_model(store.uri, key_file=store.root / "missing.key")


def test_predict_input_forms(store: Store) -> None:
    pd = pytest.importorskip("pandas")
    model = om.load_model(store.uri, key_file=store.tier1)
    expected = _reference(store, store.tier1)
    x = store.x
    rows = len(x)
    np.testing.assert_array_equal(model.predict(x), expected)
    np.testing.assert_array_equal(model.predict({"x": x}), expected)
    # MLflow's DataFrame convention: a column per input, one (flattened) sample per cell.
    flat = pd.DataFrame({"x": [s.ravel().tolist() for s in x]})
    np.testing.assert_array_equal(model.predict(flat), expected)
    nested = pd.DataFrame({"x": list(x)})
    np.testing.assert_array_equal(model.predict(nested), expected)

    # The model itself also takes pixel tables (one scalar column per value) and casts.
    python_model = model.unwrap_python_model()
    pixels = pd.DataFrame(x.reshape(rows, -1))
    np.testing.assert_array_equal(python_model.predict(None, pixels), expected)
    np.testing.assert_array_equal(python_model.predict(None, x.astype(np.float64)), expected)
    with pytest.raises(ValueError, match="do not fit input x"):
        python_model.predict(None, pd.DataFrame(x.reshape(rows, -1)[:, :100]))
    with pytest.raises(ValueError, match="unknown z"):
        python_model.predict(None, {"x": x, "z": x})
    with pytest.raises(ValueError, match="is float32"):
        python_model.predict(None, np.array([["a"]]))
    # Pickling a loaded model never carries the restored session.
    clone = pickle.loads(pickle.dumps(python_model))
    with pytest.raises(RuntimeError, match="not loaded"):
        clone.predict(None, x)


@pytest.mark.filterwarnings("ignore:.*input example was not provided")
def test_pixel_tables_through_mlflow_with_a_column_signature(store: Store) -> None:
    pd = pytest.importorskip("pandas")
    columns = [f"p{i}" for i in range(int(np.prod(store.x.shape[1:])))]
    table = pd.DataFrame(store.x.reshape(len(store.x), -1), columns=columns)
    experiment = mlflow.get_experiment_by_name("selenc").experiment_id
    with mlflow.start_run(experiment_id=experiment):
        info = om.log_model(store.package, "pixels", signature=mlflow.models.infer_signature(table))
    model = om.load_model(info.model_uri, key_file=store.tier1)
    np.testing.assert_array_equal(model.predict(table), _reference(store, store.tier1))


def test_registry_shows_what_the_model_is(store: Store) -> None:
    manifest = onnx_selenc.inspect_model(store.package).manifest
    assert manifest is not None
    client = mlflow.MlflowClient()
    version = client.get_model_version(NAME, str(store.info.registered_model_version))
    logged = mlflow.get_logged_model(store.info.model_id)
    for tags in (version.tags, logged.tags):
        assert tags["onnx_selenc.levels"] == "3"
        assert tags["onnx_selenc.key_id"] == manifest["key_id"]
        assert float(tags["onnx_selenc.encrypted_fraction"]) == pytest.approx(
            manifest["encrypted"]["fraction"]
        )
        assert json.loads(tags["onnx_selenc.level_weights"]) == manifest["level_weights"]
        assert tags["onnx_selenc.key_env"] == om.DEFAULT_KEY_ENV
    assert om.DEFAULT_KEY_ENV in version.description

    info = mlflow.models.get_model_info(store.uri)
    assert info.metadata["onnx_selenc"]["key_id"] == manifest["key_id"]
    (spec,) = info.signature.inputs.inputs
    assert (spec.name, spec.type, spec.shape) == ("x", np.dtype("float32"), (-1, 3, 8, 8))
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"

    art = next(p for p in (store.root / "art").rglob("MLmodel") if store.info.model_id in str(p))
    art = art.parent
    files = sorted(p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file())
    model_files = [f for f in files if f.startswith("artifacts/")]
    packaged = sorted(
        f"artifacts/{om.ARTIFACT}/" + p.relative_to(store.package).as_posix()
        for p in store.package.rglob("*")
        if p.is_file()
    )
    assert model_files == packaged
    # The model carries the onnx_selenc package (code_paths): nothing else to install.
    assert "code/onnx_selenc/_deploy/pyfunc.py" in files
    assert not [f for f in files if "__pycache__" in f]
    assert "input_example.json" in files


def _secrets(store: Store) -> list[bytes]:
    out: list[bytes] = [PASSPHRASE.encode()]
    for path in (store.owner, store.tier1, store.tier2, store.other):
        text = path.read_text()
        doc = json.loads(text)
        out += [text.encode(), json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()]
        key = onnx_selenc.read_key_file(path, passphrase=PASSPHRASE if "protected" in doc else None)
        for level in range(key.level + 1):
            material = key.derive(level).material
            out += [material.hex().encode(), material.hex().upper().encode(), material]
    return out


def test_store_holds_no_key_material(store: Store) -> None:
    secrets = _secrets(store)
    files = [p for p in store.root.rglob("*") if p.is_file()]
    db = store.root / "mlflow.db"
    assert db in files and len(files) > 10
    manifest = onnx_selenc.inspect_model(store.package).manifest
    assert manifest is not None
    assert str(manifest["key_id"]).encode() in db.read_bytes()  # the scan does see the DB text
    for f in files:
        data = f.read_bytes()
        leaked = [s for s in secrets if s in data]
        assert not leaked, f"key material in {f}"
        # The carried source names the key files' format marker; nothing else may.
        if "/code/onnx_selenc/" not in f.as_posix():
            assert b"onnx-selenc-key" not in data, f"key file content in {f}"

    client = mlflow.MlflowClient()
    run = client.get_run(store.info.run_id)
    version = client.get_model_version(NAME, str(store.info.registered_model_version))
    logged = mlflow.get_logged_model(store.info.model_id)
    texts = [
        json.dumps(run.data.params),
        json.dumps(run.data.tags),
        json.dumps(version.tags),
        version.description or "",
        json.dumps(logged.tags),
        json.dumps(logged.params),
        store.log_text,
    ]
    assert "Validating input example" in store.log_text  # MLflow's logs were captured
    assert "Failed to validate" not in store.log_text  # the key was used while logging
    for text in texts:
        for s in secrets:
            assert s not in text.encode()


def test_log_model_refuses_keys_and_plain_models(
    store: Store, make_encrypted, tmp_path: Path
) -> None:
    enc, key = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)  # key beside the model
    with pytest.raises(ValueError, match="key files beside it"):
        om.log_model(enc, "m")
    with pytest.raises(ValueError, match="key file, not a model"):
        om.log_model(key, "m")
    clean = package_model(enc, tmp_path / "clean").output_dir
    with pytest.raises(ValueError, match="key material"):
        om.log_model(clean, "m", extra_artifacts={"labels": key})
    nested = tmp_path / "extra"
    nested.mkdir()
    (nested / "config.yaml").write_text("secret: " + key.read_text().replace("\n", " "))
    with pytest.raises(ValueError, match="key material"):
        om.log_model(clean, "m", extra_artifacts={"config": nested})
    with pytest.raises(ValueError, match="reserved"):
        om.log_model(clean, "m", extra_artifacts={om.ARTIFACT: tmp_path / "clean" / "README.md"})
    with pytest.raises(ValueError, match="key material"):
        om.log_model(clean, "m", key_file_config=key.read_text())
    with pytest.raises(ValueError, match="environment variable name"):
        om.log_model(clean, "m", key_env=key.read_text())
    hex_key = onnx_selenc.read_key_file(key).material.hex()
    with pytest.raises(ValueError, match="key material"):
        om.log_model(clean, "m", metadata={"note": hex_key})
    with pytest.raises(ValueError, match="key material"):
        om.log_model(clean, "m", tags={"note": key.read_text()})

    plain = tmp_path / "plain"
    plain.mkdir()
    onnx.save(tiny_models.cnn(), plain / "model.onnx")
    with pytest.raises(NotEncrypted):
        om.log_model(plain / "model.onnx", "m")
    assert not list(tmp_path.glob("**/MLmodel"))
