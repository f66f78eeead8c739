"""What :func:`onnx_selenc.mlflow.save_model` and ``log_model`` share: checks, then staging.

Both check their inputs for key material, package the model and copy the
``onnx_selenc`` package into a temporary folder, and hand MLflow the same arguments;
``log_model`` adds the registry's tags and the version's description.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.models import ModelSignature

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._deploy import model_code
from onnx_selenc._deploy.environment import serving_requirements, stage_package
from onnx_selenc._deploy.model_config import Id2Label
from onnx_selenc._deploy.package import package
from onnx_selenc._deploy.pyfunc import ARTIFACT, provider_specs
from onnx_selenc._deploy.registry import (
    TAG_PREFIX,
    check_env_name,
    manifest_tags,
    public_metadata,
    refuse_key_text,
    refuse_keys,
)
from onnx_selenc._deploy.signature import graph_signature
from onnx_selenc._load.loader import resolve_model_path
from onnx_selenc._onnx.modelio import load_model as _load_onnx

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo


@dataclass(frozen=True)
class Spec:
    """The arguments ``save_model`` and ``log_model`` share (documented by ``log_model``)."""

    source: Path
    key_env: str | None
    passphrase_env: str | None
    key_file_config: str | None
    level: int | None
    providers: Sequence[str | tuple[str, Mapping[str, Any]]] | None
    allow_options: Collection[str]
    runtime: str | None
    title: str | None
    input_example: Any
    signature: ModelSignature | None
    extra_artifacts: Mapping[str, str | os.PathLike[str]]
    pip_requirements: Sequence[str] | None
    extra_pip_requirements: Sequence[str] | None
    metadata: Mapping[str, Any]
    tags: Mapping[str, str]
    preprocess: str | os.PathLike[str] | None = None
    id2label: Id2Label | str | os.PathLike[str] | None = None


@dataclass(frozen=True)
class Prepared:
    """The arguments for MLflow, and the tags and manifest of the model."""

    kwargs: dict[str, Any]  # for mlflow.pyfunc.save_model / log_model
    tags: dict[str, str]
    manifest: dict[str, Any]


@contextlib.contextmanager
def prepared(spec: Spec) -> Iterator[Prepared]:
    """Check everything, then package the model and stage the code in a temporary folder."""
    refuse_keys(spec.source, spec.extra_artifacts)
    check_env_name(spec.key_env, "key_env")
    check_env_name(spec.passphrase_env, "passphrase_env")
    if spec.key_file_config is not None:
        refuse_key_text({"key_file_config": spec.key_file_config})
        if "\n" in spec.key_file_config:
            raise ValueError("key_file_config must be a key file path")
    allow = [str(o) for o in spec.allow_options]
    refuse_key_text(
        {**spec.metadata, **spec.tags, "title": spec.title or "", "allow_options": allow}
    )
    if ARTIFACT in spec.extra_artifacts:
        raise ValueError(f"artifact name {ARTIFACT!r} is reserved for the encrypted model")
    requirements = (
        list(spec.pip_requirements)
        if spec.pip_requirements is not None
        else [*serving_requirements(spec.runtime), *(spec.extra_pip_requirements or [])]
    )
    provider_specs(spec.providers)  # a malformed entry fails now, not at serving

    model = _load_onnx(resolve_model_path(spec.source), load_external=False)
    manifest = _bundle.read_bundle(model)[0].as_dict()  # NotEncrypted for a plain model
    title = spec.title or _default_title(spec.source)
    config: dict[str, Any] = {
        "key_env": spec.key_env,
        "key_file": spec.key_file_config,
        "passphrase_env": spec.passphrase_env,
        "level": spec.level,
        "providers": [p if isinstance(p, str) else [p[0], dict(p[1])] for p in spec.providers]
        if spec.providers
        else None,
        # Every key is present (None or empty when unset): MLflow lets a load-time
        # model_config override only the keys the saved configuration has.
        "allow_options": allow,
        "runtime": spec.runtime,
        "title": title,
    }
    tags = {**manifest_tags(manifest), TAG_PREFIX + "key_env": spec.key_env or "", **spec.tags}
    with tempfile.TemporaryDirectory(prefix="onnx-selenc-mlflow-") as tmp:
        packaged = package(
            spec.source,
            Path(tmp) / ARTIFACT,
            title=title,
            preprocess=spec.preprocess,
            id2label=spec.id2label,
        ).output_dir
        code = stage_package(Path(tmp) / "code")
        with warnings.catch_warnings():
            # The signature is recorded from the graph: MLflow's advice to give an input
            # example, at every save without one, is not for this model (and a predict
            # on it would need a key).
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            yield Prepared(
                kwargs=dict(
                    # Models-from-code: the folder holds this file, not a pickle.
                    python_model=model_code.__file__,
                    artifacts={
                        ARTIFACT: str(packaged),
                        **{k: os.fspath(v) for k, v in spec.extra_artifacts.items()},
                    },
                    code_paths=[str(code)],
                    model_config=config,
                    signature=spec.signature
                    if spec.signature is not None
                    else graph_signature(model),
                    input_example=spec.input_example,
                    # Explicit requirements: MLflow would otherwise infer them by loading the
                    # model in a subprocess, which needs the key (and takes seconds).
                    pip_requirements=requirements,
                    metadata={
                        **spec.metadata,
                        "onnx_selenc": public_metadata(manifest, spec.key_env),
                    },
                ),
                tags=tags,
                manifest=manifest,
            )


def _default_title(source: Path) -> str:
    # As the package's model card names it: the folder, or the file's stem.
    return source.resolve().name if source.is_dir() else source.name.split(".")[0]


def describe_version(info: ModelInfo, name: str, staged: Prepared, key_env: str | None) -> None:
    """Put the tags on the registered version and say which variable the key goes in."""
    version = info.registered_model_version
    if version is None:
        return
    client = mlflow.MlflowClient()
    for k, v in staged.tags.items():
        client.set_model_version_tag(name, str(version), k, v)
    manifest = staged.manifest
    client.update_model_version(
        name,
        str(version),
        description=(
            f"onnx-selenc encrypted model: {manifest['levels']} levels, key id "
            f"{manifest['key_id']}. Serve with the key of a tier in "
            f"${key_env or 'ONNX_SELENC_KEY'} (a key file's path or content)."
        ),
    )
