"""MLflow integration: an encrypted model as a custom pyfunc that restores its weights at load.

MLflow's own ``onnx`` flavour would build a plain ONNX Runtime session from the
encrypted file and serve the random kernels without a word. This flavour logs the
encrypted model (packaged: ``onnx/model.enc.onnx``, external data, ``manifest.json``,
``README.md``) as the artifact of an :class:`EncryptedOnnxModel`, and restores the
weights in memory when the model is loaded, with a key taken from the serving
environment. Key files and key material are never logged: :func:`log_model` refuses them.

Where the key comes from at load time (``model_config``; overridable at load with
``mlflow.pyfunc.load_model(uri, model_config={...})`` or the environment variable
``MLFLOW_PYFUNC_INFERENCE_CONFIG``):

- ``key_env`` (default ``ONNX_SELENC_KEY``): an environment variable holding a key
  file's path or its content. Used when set.
- ``key_file``: a key file path (a mounted secret); used when ``key_env`` is unset.
- ``passphrase_env`` (default ``ONNX_SELENC_PASSPHRASE``): the passphrase of a
  protected key file.
- ``level``: restore a lower level than the key grants (default: the key's level).
- ``providers``: ONNX Runtime providers (default: CUDA where available, then CPU).

What ``predict`` accepts (``model_input``), and returns (a ``dict`` of output name to
``numpy.ndarray``) is described in :meth:`EncryptedOnnxModel.predict`.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

try:
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.pyfunc import PythonModel
    from mlflow.types import Schema, TensorSpec
except ImportError as exc:  # pragma: no cover - exercised only without mlflow
    raise ImportError("onnx_selenc.mlflow needs MLflow: pip install 'onnx-selenc[mlflow]'") from exc

import numpy as np
import onnx

from onnx_selenc import __version__
from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._deploy.feeds import InputSpec, input_specs, to_feeds
from onnx_selenc._deploy.package import package
from onnx_selenc._deploy.registry import (
    TAG_PREFIX,
    check_env_name,
    manifest_tags,
    public_metadata,
    refuse_key_text,
    refuse_keys,
    registry_tags,
)
from onnx_selenc._deploy.serving_key import DEFAULT_KEY_ENV, DEFAULT_PASSPHRASE_ENV, serving_key
from onnx_selenc._load.loader import load_session, resolve_model_path
from onnx_selenc._onnx.modelio import load_model as _load_onnx
from onnx_selenc.exceptions import KeyNotConfigured

__all__ = [
    "ARTIFACT",
    "DEFAULT_KEY_ENV",
    "DEFAULT_PASSPHRASE_ENV",
    "TAG_PREFIX",
    "EncryptedOnnxModel",
    "InputSpec",
    "KeyNotConfigured",
    "default_requirements",
    "graph_signature",
    "load_model",
    "log_model",
    "registry_tags",
    "serving_key",
    "to_feeds",
]

if TYPE_CHECKING:
    import onnxruntime as ort
    import pandas as pd
    from mlflow.models.model import ModelInfo
    from mlflow.pyfunc import PyFuncModel, PythonModelContext

    # Only for type checkers: MLflow reads ``predict``'s annotations to validate
    # inputs and would reject (or mis-infer a signature from) this union. Left
    # unresolvable at run time, MLflow skips type-hint inference.
    ModelInput: TypeAlias = np.ndarray | Mapping[str, Any] | pd.DataFrame

ARTIFACT = "encrypted_model"


class EncryptedOnnxModel(PythonModel):
    """MLflow pyfunc model of an onnx-selenc encrypted ONNX model.

    Holds nothing at log time (it pickles empty); :meth:`load_context` restores the
    weights in memory with the key of the serving environment and keeps the session.

    Example:
        >>> model = mlflow.pyfunc.load_model("models:/resnet-enc/3")  # doctest: +SKIP
        >>> model.predict(images)["logits"].shape  # doctest: +SKIP
        (8, 1000)
    """

    # MLflow would wrap ``predict`` to validate inputs against its annotations; the
    # recorded signature does that job, and the conversion below handles the rest.
    _skip_type_hint_validation = True

    def __init__(self) -> None:
        self._session: ort.InferenceSession | None = None
        self._inputs: tuple[InputSpec, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle a restored session (or anything derived from a key).
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._session = None
        self._inputs = ()

    def load_context(self, context: PythonModelContext) -> None:
        """Restore the model with the serving environment's key.

        Raises:
            KeyNotConfigured: no key in the configured environment variable or file.
            KeyMismatch: the key belongs to another model.
            LevelNotGranted: ``level`` in the configuration is above the key's.
            KeyFileError: a malformed key file, or a protected one without its passphrase.
            InvalidBundle: the model or key failed authentication.
        """
        config = dict(context.model_config or {})
        key = serving_key(
            key_env=config.get("key_env"),
            key_file=config.get("key_file"),
            passphrase_env=config.get("passphrase_env"),
        )
        level = config.get("level")
        providers = config.get("providers")
        self._session = load_session(
            context.artifacts[ARTIFACT],
            key=key,
            level=None if level is None else int(level),
            providers=list(providers) if providers else None,
        )
        self._inputs = input_specs(self._session)

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: ModelInput,
        params: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the restored model.

        ``model_input`` may be:

        - a ``numpy.ndarray`` (or nested list): the input of a single-input model;
        - a mapping of input name to array: every model input, no other name;
        - a ``pandas.DataFrame`` with one column per model input, each cell one
          sample (a scalar, or a list/array, flattened or not): each column is
          stacked and reshaped to ``(rows, *input dims after the batch dim)``
          (MLflow's tensor convention for DataFrames);
        - for a single-input model, a ``pandas.DataFrame`` of scalar columns, one row
          per sample (e.g. an image's C*H*W pixel values): each row is reshaped to the
          input's dims after the batch dim; at most one of those may be free.

        Values are cast to the input's dtype when numpy's ``same_kind`` rule allows
        (float64 to float32, ints to floats). When called through MLflow, MLflow
        first checks the input against the recorded signature (see :func:`log_model`).

        Returns:
            Output name -> ``numpy.ndarray``, in the model's output order.

        Raises:
            ValueError: the input does not fit the model's inputs.
            RuntimeError: the model was not loaded (``load_context`` not called).
        """
        if self._session is None:
            raise RuntimeError("the model is not loaded: MLflow calls load_context first")
        feeds = to_feeds(model_input, self._inputs)
        outputs = self._session.run(None, feeds)
        return {
            meta.name: np.asarray(value)
            for meta, value in zip(self._session.get_outputs(), outputs, strict=True)
        }


def graph_signature(model: onnx.ModelProto) -> ModelSignature | None:
    """A named tensor signature from the graph's inputs and outputs (public, unencrypted).

    Free dimensions become ``-1``. ``None`` if an input or output is not a tensor.
    """

    def specs(values: Sequence[onnx.ValueInfoProto]) -> list[TensorSpec] | None:
        out = []
        for v in values:
            if not v.type.HasField("tensor_type"):
                return None
            t = v.type.tensor_type
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
            shape = tuple(d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim)
            out.append(TensorSpec(dtype, shape, v.name))
        return out

    initializers = {i.name for i in model.graph.initializer}
    inputs = specs([i for i in model.graph.input if i.name not in initializers])
    outputs = specs(list(model.graph.output))
    if inputs is None or outputs is None:
        return None
    return ModelSignature(Schema(inputs), Schema(outputs))  # type: ignore[arg-type]


def default_requirements() -> list[str]:
    """Pinned requirements of the serving environment (MLflow adds itself)."""
    reqs = [f"onnx-selenc=={__version__}"]
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "cryptography", "pandas"):
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return reqs


def log_model(
    encrypted_model_path: str | os.PathLike[str],
    name: str,
    *,
    key_env: str | None = DEFAULT_KEY_ENV,
    passphrase_env: str | None = DEFAULT_PASSPHRASE_ENV,
    key_file_config: str | None = None,
    level: int | None = None,
    providers: Sequence[str] | None = None,
    input_example: Any = None,
    signature: ModelSignature | None = None,
    registered_model_name: str | None = None,
    extra_artifacts: Mapping[str, str | os.PathLike[str]] | None = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> ModelInfo:
    """Log an encrypted model as an MLflow pyfunc model (never its key).

    The artifact is the model packaged by :func:`onnx_selenc.package`: the encrypted
    ``.onnx``, its external data, ``manifest.json`` and a README. The key comes from
    the serving environment at load time (see the module docstring). Tags
    ``onnx_selenc.*`` (:func:`registry_tags`, plus ``onnx_selenc.key_env``) go on the
    logged model and, when registered, on the model version.

    Args:
        encrypted_model_path: an encrypted ``.onnx`` or a packaged folder.
        name: the model's name in the run (MLflow 3's ``name``, formerly ``artifact_path``).
        key_env: environment variable that will hold the key's path or content.
        passphrase_env: environment variable that will hold a protected key's passphrase.
        key_file_config: default key file *path* at serving (a mounted secret), never
            key content.
        level: restore this level at load (default: the key's level).
        providers: ONNX Runtime providers at load (default: CUDA if available, then CPU).
        input_example: recorded as MLflow's input example. MLflow tries it on the
            logged model when the key is available in this process (and only warns if not).
        signature: default: a tensor signature read from the graph (:func:`graph_signature`).
        registered_model_name: also register the model under this name.
        extra_artifacts: more files or folders to log (labels, preprocessing); scanned
            for key files.
        pip_requirements: default :func:`default_requirements`.
        extra_pip_requirements: added to the default requirements (ignored when
            ``pip_requirements`` is given).
        metadata: extra MLmodel metadata (an ``onnx_selenc`` entry is added).
        tags: extra logged-model tags.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri``, ``registered_model_version``, ...).

    Raises:
        ValueError: a key file or key material among the inputs, next to the model, or
            in the configuration, metadata or tags; a bad environment variable name.
        NotEncrypted: the model is not an onnx-selenc model (log it with ``mlflow.onnx``).
        FormatError: malformed model.

    Example:
        >>> with mlflow.start_run():  # doctest: +SKIP
        ...     info = log_model("dist/my-model", "model", registered_model_name="my-model")
    """
    source = Path(encrypted_model_path)
    refuse_keys(source, extra_artifacts or {})
    check_env_name(key_env, "key_env")
    check_env_name(passphrase_env, "passphrase_env")
    if key_file_config is not None:
        refuse_key_text({"key_file_config": key_file_config})
        if "\n" in key_file_config:
            raise ValueError("key_file_config must be a key file path")
    refuse_key_text({**(metadata or {}), **(tags or {})})

    model = _load_onnx(resolve_model_path(source), load_external=False)
    manifest = _bundle.read_bundle(model)[0].as_dict()  # NotEncrypted for a plain model
    model_tags = {
        **manifest_tags(manifest),
        TAG_PREFIX + "key_env": key_env or "",
        **(tags or {}),
    }
    config: dict[str, Any] = {
        "key_env": key_env,
        "key_file": key_file_config,
        "passphrase_env": passphrase_env,
        "level": level,
        "providers": list(providers) if providers else None,
    }
    reserved = set(extra_artifacts or {}) & {ARTIFACT}
    if reserved:
        raise ValueError(f"artifact name {ARTIFACT!r} is reserved for the encrypted model")
    with tempfile.TemporaryDirectory(prefix="onnx-selenc-mlflow-") as tmp:
        packaged = package(source, Path(tmp) / ARTIFACT).output_dir
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=EncryptedOnnxModel(),
            artifacts={
                ARTIFACT: str(packaged),
                **{k: os.fspath(v) for k, v in (extra_artifacts or {}).items()},
            },
            model_config=config,
            signature=signature if signature is not None else graph_signature(model),
            input_example=input_example,
            registered_model_name=registered_model_name,
            # Explicit requirements: MLflow would otherwise infer them by loading the
            # model in a subprocess, which needs the key (and takes seconds).
            pip_requirements=(
                list(pip_requirements)
                if pip_requirements is not None
                else [*default_requirements(), *(extra_pip_requirements or [])]
            ),
            metadata={**(metadata or {}), "onnx_selenc": public_metadata(manifest, key_env)},
            tags=model_tags,
        )
    version = info.registered_model_version
    if registered_model_name and version is not None:
        client = mlflow.MlflowClient()
        for k, v in model_tags.items():
            client.set_model_version_tag(registered_model_name, str(version), k, v)
        client.update_model_version(
            registered_model_name,
            str(version),
            description=(
                f"onnx-selenc encrypted model: {manifest['levels']} levels, key id "
                f"{manifest['key_id']}. Serve with the key of a tier in "
                f"${key_env or 'ONNX_SELENC_KEY'} (a key file's path or content)."
            ),
        )
    return info


def load_model(
    model_uri: str,
    *,
    key_env: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    passphrase_env: str | None = None,
    level: int | None = None,
    providers: Sequence[str] | None = None,
    dst_path: str | None = None,
) -> PyFuncModel:
    """Load a model logged by :func:`log_model`, restored with the environment's key.

    Arguments left ``None`` keep the logged configuration. Giving ``key_file`` (and
    no ``key_env``) uses that file only, whatever the environment holds.

    Args:
        model_uri: ``models:/<name>/<version>``, ``runs:/<run>/<name>``, a path, ...
        key_env: environment variable holding a key file's path or content.
        key_file: key file path.
        passphrase_env: environment variable holding a protected key's passphrase.
        level: restore this level (at most the key's).
        providers: ONNX Runtime providers.
        dst_path: where MLflow downloads the artifacts.

    Returns:
        MLflow's ``PyFuncModel``; ``predict`` returns output name -> array.

    Raises:
        KeyNotConfigured, KeyMismatch, LevelNotGranted, KeyFileError, InvalidBundle:
            see :meth:`EncryptedOnnxModel.load_context`.

    Example:
        >>> model = load_model("models:/my-model/2")  # doctest: +SKIP
        >>> model.predict({"x": x})  # doctest: +SKIP
    """
    overrides: dict[str, Any] = {}
    if key_file is not None:
        overrides.update(key_file=os.fspath(key_file), key_env=key_env)
    elif key_env is not None:
        overrides["key_env"] = key_env
    if passphrase_env is not None:
        overrides["passphrase_env"] = passphrase_env
    if level is not None:
        overrides["level"] = int(level)
    if providers is not None:
        overrides["providers"] = list(providers)
    return mlflow.pyfunc.load_model(model_uri, dst_path=dst_path, model_config=overrides or None)
