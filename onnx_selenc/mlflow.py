"""MLflow integration: an encrypted model as a custom pyfunc that restores its weights at load.

MLflow's own ``onnx`` flavour would build a plain ONNX Runtime session from the
encrypted file and serve the random kernels without a word. This flavour saves the
encrypted model, packaged by :func:`onnx_selenc.package`, as the artifact of an
:class:`EncryptedOnnxModel`, and restores the weights in memory when the model is
loaded, with a key taken from the serving environment. Key files and key material are
never saved: :func:`save_model` and :func:`log_model` refuse them.

The saved model is self-contained: it carries the ``onnx_selenc`` package (MLflow
``code_paths``) and requires only onnx-selenc's dependencies plus the ONNX Runtime the
caller names (``runtime``), so ``pip install -r requirements.txt`` builds its serving
environment from a package index (see ``onnx_selenc._deploy.environment``).

Where the key comes from at load time (``model_config``; overridable at load with
``mlflow.pyfunc.load_model(uri, model_config={...})`` or the environment variable
``MLFLOW_PYFUNC_INFERENCE_CONFIG``):

- ``key_env`` (default ``ONNX_SELENC_KEY``): an environment variable holding a key
  file's path or its content. Used when set.
- ``key_file``: a key file path (a mounted secret); used when ``key_env`` is unset.
- ``passphrase_env`` (default ``ONNX_SELENC_PASSPHRASE``): the passphrase of a
  protected key file.
- ``level``: the level to restore, at most the key's (default: the key's level); a
  key granting less fails the load with ``LevelNotGranted``: a minimum-level guard.
- ``providers``: ONNX Runtime providers, names or ``[name, {options}]`` pairs
  (default: CUDA where available, then CPU).
- ``allow_options``: provider option names the deployer vouches never write to disk
  (see ``onnx_selenc.load_session``).
- ``title``, ``runtime``: what was logged (shown by ``describe()``).

What ``predict`` accepts and returns is described in :meth:`EncryptedOnnxModel.predict`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
except ImportError as exc:  # pragma: no cover - exercised only without mlflow
    raise ImportError("onnx_selenc.mlflow needs MLflow: pip install 'onnx-selenc[mlflow]'") from exc

from onnx_selenc._deploy.environment import DEFAULT_RUNTIME, serving_requirements
from onnx_selenc._deploy.feeds import InputSpec, to_feeds
from onnx_selenc._deploy.package_files import (
    check_destination,
    move_into_place,
    staging_folder,
    write_file_list,
)
from onnx_selenc._deploy.pyfunc import ARTIFACT, EncryptedOnnxModel, ServingFacts
from onnx_selenc._deploy.registry import TAG_PREFIX, registry_tags
from onnx_selenc._deploy.saving import Spec, describe_version, prepared
from onnx_selenc._deploy.serving_key import DEFAULT_KEY_ENV, DEFAULT_PASSPHRASE_ENV, serving_key
from onnx_selenc._deploy.signature import graph_signature
from onnx_selenc.exceptions import KeyNotConfigured

__all__ = [
    "ARTIFACT",
    "DEFAULT_KEY_ENV",
    "DEFAULT_PASSPHRASE_ENV",
    "DEFAULT_RUNTIME",
    "TAG_PREFIX",
    "EncryptedOnnxModel",
    "InputSpec",
    "KeyNotConfigured",
    "ServingFacts",
    "default_requirements",
    "graph_signature",
    "load_model",
    "log_model",
    "registry_tags",
    "save_model",
    "serving_key",
    "to_feeds",
]

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from mlflow.pyfunc import PyFuncModel


def default_requirements(runtime: str | None = DEFAULT_RUNTIME) -> list[str]:
    """Pinned requirements of the serving environment (MLflow adds itself).

    onnx, numpy and cryptography at the versions installed here, and the ONNX Runtime
    ``runtime`` names: ``"onnxruntime"`` (the default: CPU), ``"onnxruntime-gpu"``, a
    full requirement (``"onnxruntime-gpu==1.20.1"``), or ``None`` for none. onnx-selenc
    itself is not a requirement: the model carries it (``code_paths``).

    Raises:
        ValueError: ``runtime`` does not name an ONNX Runtime distribution.
    """
    return serving_requirements(runtime)


def save_model(
    encrypted_model_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    key_env: str | None = DEFAULT_KEY_ENV,
    passphrase_env: str | None = DEFAULT_PASSPHRASE_ENV,
    key_file_config: str | None = None,
    level: int | None = None,
    providers: Sequence[str | tuple[str, Mapping[str, Any]]] | None = None,
    allow_options: Collection[str] = (),
    runtime: str | None = DEFAULT_RUNTIME,
    title: str | None = None,
    input_example: Any = None,
    signature: ModelSignature | None = None,
    extra_artifacts: Mapping[str, str | os.PathLike[str]] | None = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    preprocess: str | os.PathLike[str] | None = None,
    id2label: Any = None,
    overwrite: bool = False,
) -> None:
    """Save an encrypted model as a plain MLflow model folder (never its key).

    ``mlflow.pyfunc.load_model(path)`` loads it and ``mlflow models serve -m path``
    serves it, with the key of the serving environment. The arguments are those of
    :func:`log_model`, less the registry's (``name``, ``registered_model_name``, ``tags``).

    Args:
        encrypted_model_path: an encrypted ``.onnx`` or a packaged folder.
        path: the model folder to create (absent or empty).
        key_env: as in :func:`log_model`.
        passphrase_env: as in :func:`log_model`.
        key_file_config: as in :func:`log_model`.
        level: as in :func:`log_model`.
        providers: as in :func:`log_model`.
        allow_options: as in :func:`log_model`.
        runtime: as in :func:`log_model`.
        title: as in :func:`log_model` (default: the model's folder or file stem).
        input_example: as in :func:`log_model`.
        signature: as in :func:`log_model`.
        extra_artifacts: as in :func:`log_model`.
        pip_requirements: as in :func:`log_model`.
        extra_pip_requirements: as in :func:`log_model`.
        metadata: as in :func:`log_model`.
        preprocess: as in :func:`log_model`.
        id2label: as in :func:`log_model`.
        overwrite: replace ``path`` if it exists and is not empty, provided an earlier
            ``save_model`` or ``package`` wrote it and it holds nothing else (no key file,
            no file of yours: those are refused, nothing removed).

    The folder is built beside ``path`` and renamed into place: an error or an
    interruption leaves ``path`` as it was.

    Raises:
        ValueError, NotEncrypted, FormatError: as in :func:`log_model`.
        FileExistsError: ``path`` exists and is not empty (without ``overwrite``; with
            it, when it holds a key file or anything onnx-selenc did not write there), or
            is a file.

    Example:
        >>> save_model("dist/my-model", "serving/my-model")  # doctest: +SKIP
        >>> mlflow.pyfunc.load_model("serving/my-model").predict(x)  # doctest: +SKIP
    """
    spec = Spec(
        Path(encrypted_model_path),
        key_env,
        passphrase_env,
        key_file_config,
        level,
        providers,
        allow_options,
        runtime,
        title,
        input_example,
        signature,
        extra_artifacts or {},
        pip_requirements,
        extra_pip_requirements,
        metadata or {},
        {},
        preprocess,
        id2label,
    )
    out = Path(path)
    check_destination(out, [spec.source], overwrite=overwrite)
    with prepared(spec) as staged:
        tmp = staging_folder(out)
        try:
            mlflow.pyfunc.save_model(os.fspath(tmp), **staged.kwargs)
            write_file_list(tmp)  # what a later overwrite may replace, and nothing else
            move_into_place(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was moved


def log_model(
    encrypted_model_path: str | os.PathLike[str],
    name: str,
    *,
    key_env: str | None = DEFAULT_KEY_ENV,
    passphrase_env: str | None = DEFAULT_PASSPHRASE_ENV,
    key_file_config: str | None = None,
    level: int | None = None,
    providers: Sequence[str | tuple[str, Mapping[str, Any]]] | None = None,
    allow_options: Collection[str] = (),
    runtime: str | None = DEFAULT_RUNTIME,
    title: str | None = None,
    input_example: Any = None,
    signature: ModelSignature | None = None,
    registered_model_name: str | None = None,
    extra_artifacts: Mapping[str, str | os.PathLike[str]] | None = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    preprocess: str | os.PathLike[str] | None = None,
    id2label: Any = None,
) -> ModelInfo:
    """Log an encrypted model as an MLflow pyfunc model (never its key).

    The artifact is the model packaged by :func:`onnx_selenc.package`; the model also
    carries the ``onnx_selenc`` package (``code/``), so its requirements need no index
    to serve onnx-selenc. The key comes from the serving environment at load time (see
    the module docstring). Tags ``onnx_selenc.*`` (:func:`registry_tags`, plus
    ``onnx_selenc.key_env``) go on the logged model and, when registered, on the version.

    Args:
        encrypted_model_path: an encrypted ``.onnx`` or a packaged folder.
        name: the model's name in the run (MLflow 3's ``name``, formerly ``artifact_path``).
        key_env: environment variable that will hold the key's path or content.
        passphrase_env: environment variable that will hold a protected key's passphrase.
        key_file_config: default key file *path* at serving (a mounted secret), never
            key content.
        level: restore this level at load (default: the key's level); a key granting
            less fails the load (``LevelNotGranted``).
        providers: ONNX Runtime providers at load, names or ``(name, options)``
            (default: CUDA if available, then CPU).
        allow_options: provider option names that the check of options writing to disk
            does not know and the deployer vouches for (``load_session``'s).
        runtime: the ONNX Runtime of the serving environment: ``"onnxruntime"`` (the
            default, CPU), ``"onnxruntime-gpu"``, a full requirement, or ``None`` (the
            image has one). See :func:`default_requirements`.
        title: the model's name in the package's model card and in the serving log
            (default: ``registered_model_name``, else the model's folder or file stem).
        input_example: recorded as MLflow's input example. MLflow tries it on the
            logged model when the key is available in this process (and only warns if not).
        signature: default: :func:`graph_signature` (tensor inputs, one column per output).
        registered_model_name: also register the model under this name.
        extra_artifacts: more files or folders to log (labels, preprocessing); scanned
            for key files.
        pip_requirements: default :func:`default_requirements` of ``runtime``.
        extra_pip_requirements: added to the default requirements (ignored when
            ``pip_requirements`` is given).
        metadata: extra MLmodel metadata (an ``onnx_selenc`` entry is added).
        tags: extra logged-model tags.
        preprocess: a JSON file of the preprocessing the model expects, packaged as
            ``preprocessor_config.json`` (:func:`onnx_selenc.package`'s).
        id2label: class labels for the package's ``config.json`` (``package``'s).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri``, ``registered_model_version``, ...).

    Raises:
        ValueError: a key file or key material among the inputs, next to the model, or
            in the configuration, metadata or tags; a bad environment variable name, a
            ``runtime`` that is not an ONNX Runtime, a malformed ``providers`` entry.
        NotEncrypted: the model is not an onnx-selenc model (log it with ``mlflow.onnx``).
        FormatError: malformed model.

    Example:
        >>> with mlflow.start_run():  # doctest: +SKIP
        ...     info = log_model("dist/my-model", "model", registered_model_name="my-model")
    """
    spec = Spec(
        Path(encrypted_model_path),
        key_env,
        passphrase_env,
        key_file_config,
        level,
        providers,
        allow_options,
        runtime,
        title or registered_model_name,
        input_example,
        signature,
        extra_artifacts or {},
        pip_requirements,
        extra_pip_requirements,
        metadata or {},
        tags or {},
        preprocess,
        id2label,
    )
    with prepared(spec) as staged:
        info = mlflow.pyfunc.log_model(
            name=name,
            registered_model_name=registered_model_name,
            tags=staged.tags,
            **staged.kwargs,
        )
    if registered_model_name:
        describe_version(info, registered_model_name, staged, key_env)
    return info


def load_model(
    model_uri: str,
    *,
    key_env: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    passphrase_env: str | None = None,
    level: int | None = None,
    providers: Sequence[str | tuple[str, Mapping[str, Any]]] | None = None,
    allow_options: Collection[str] | None = None,
    dst_path: str | None = None,
) -> PyFuncModel:
    """Load a model saved by :func:`save_model` or :func:`log_model`, with the environment's key.

    Arguments left ``None`` keep the saved configuration. Giving ``key_file`` (and
    no ``key_env``) uses that file only, whatever the environment holds.

    Args:
        model_uri: ``models:/<name>/<version>``, ``runs:/<run>/<name>``, a path, ...
        key_env: environment variable holding a key file's path or content.
        key_file: key file path.
        passphrase_env: environment variable holding a protected key's passphrase.
        level: restore this level; a key granting less fails (``LevelNotGranted``).
        providers: ONNX Runtime providers, names or ``(name, options)``.
        allow_options: provider option names vouched for (see :func:`log_model`).
        dst_path: where MLflow downloads the artifacts.

    Returns:
        MLflow's ``PyFuncModel``; see :meth:`EncryptedOnnxModel.predict` for what
        ``predict`` returns, and ``unwrap_python_model().describe()`` for what runs.

    Raises:
        KeyNotConfigured, KeyMismatch, LevelNotGranted, KeyFileError, InvalidBundle,
        UnsafeSessionOptions: see :meth:`EncryptedOnnxModel.load_context`.

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
        overrides["providers"] = [
            p if isinstance(p, str) else [p[0], dict(p[1])] for p in providers
        ]
    if allow_options is not None:
        overrides["allow_options"] = [str(o) for o in allow_options]
    return mlflow.pyfunc.load_model(model_uri, dst_path=dst_path, model_config=overrides or None)
