"""The pyfunc model MLflow loads: restores the weights with the serving key, says what runs.

A tier-0 key, a lower level than meant, or a CUDA provider that did not load all serve
without an error; :meth:`EncryptedOnnxModel.load_context` therefore logs what it
restored and on which providers, warns when CUDA was wanted but does not run, and
:meth:`EncryptedOnnxModel.describe` returns the same facts for a health check.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext

from onnx_selenc import __version__
from onnx_selenc._deploy.feeds import InputSpec, input_specs, to_feeds
from onnx_selenc._deploy.serving_key import serving_key
from onnx_selenc._load.loader import default_providers, load_session

if TYPE_CHECKING:
    import onnxruntime as ort
    import pandas as pd

    ModelInput: TypeAlias = np.ndarray | Mapping[str, Any] | pd.DataFrame
    ModelOutput: TypeAlias = np.ndarray | dict[str, np.ndarray]
else:
    # MLflow reads ``predict``'s hints at run time: it would reject (or infer a signature
    # from) the union above, and logs "Unsupported type hint" for a name it cannot
    # resolve. numpy arrays are a hint it takes as is, with no inference (the signature
    # is recorded from the graph).
    ModelInput = ModelOutput = np.ndarray

ARTIFACT = "encrypted_model"
CUDA = "CUDAExecutionProvider"
logger = logging.getLogger("onnx_selenc.mlflow")


@dataclass(frozen=True)
class ServingFacts:
    """What a loaded model serves: :meth:`EncryptedOnnxModel.describe` returns it as a dict.

    Attributes:
        title: the model's title, as logged.
        key_id: the model's public key id (the serving key's).
        level: the level restored; ``levels`` is the top (the original model).
        levels: the model's number of levels.
        providers: the providers ONNX Runtime runs the model on (``get_providers()``).
        requested_providers: those asked for (configured, or the default).
        cuda_requested: CUDA was asked for, or the model was logged for ``onnxruntime-gpu``.
        cuda_running: ``CUDAExecutionProvider`` is among ``providers``.
        inputs: name, type and shape of each input (``None``: a free dimension).
        outputs: name, type and shape of each output.
        onnx_selenc_version: the onnx-selenc that restored it.
    """

    title: str | None
    key_id: str
    level: int
    levels: int
    providers: list[str]
    requested_providers: list[str]
    cuda_requested: bool
    cuda_running: bool
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    onnx_selenc_version: str = __version__


class EncryptedOnnxModel(PythonModel):
    """MLflow pyfunc model of an onnx-selenc encrypted ONNX model.

    Holds nothing at log time (it pickles empty); :meth:`load_context` restores the
    weights in memory with the key of the serving environment and keeps the session.

    Example:
        >>> model = mlflow.pyfunc.load_model("models:/resnet-enc/3")  # doctest: +SKIP
        >>> model.predict(images).shape  # doctest: +SKIP
        (8, 1000)
        >>> model.unwrap_python_model().describe()["level"]  # doctest: +SKIP
        2
    """

    # MLflow would wrap ``predict`` to validate inputs against its annotations; the
    # recorded signature does that job, and the conversion below handles the rest.
    _skip_type_hint_validation = True

    def __init__(self) -> None:
        self._session: ort.InferenceSession | None = None
        self._inputs: tuple[InputSpec, ...] = ()
        self._facts: ServingFacts | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle a restored session (or anything derived from a key).
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def load_context(self, context: PythonModelContext) -> None:
        """Restore the model with the serving environment's key, and log what runs.

        Logs one INFO line on the ``onnx_selenc.mlflow`` logger (title, key id, level
        restored / levels, providers running) and warns (``RuntimeWarning`` and a
        WARNING record) when CUDA was asked for but ONNX Runtime does not run it.

        Raises:
            KeyNotConfigured: no key in the configured environment variable or file.
            KeyMismatch: the key belongs to another model.
            LevelNotGranted: ``level`` in the configuration is above the key's.
            KeyFileError: a malformed key file, or a protected one without its passphrase.
            InvalidBundle: the model or key failed authentication.
            UnsafeSessionOptions: provider options not known to be safe and not in
                ``allow_options``, or ones that write the model to disk.
        """
        config = dict(context.model_config or {})
        key = serving_key(
            key_env=config.get("key_env"),
            key_file=config.get("key_file"),
            passphrase_env=config.get("passphrase_env"),
        )
        level = None if config.get("level") is None else int(config["level"])
        providers = provider_specs(config.get("providers"))
        runtime = str(config.get("runtime") or "")
        if providers is None and "gpu" in runtime:
            # Logged for onnxruntime-gpu: CUDA is what is meant, so it is what is asked
            # for (ONNX Runtime falls back to the CPU, and the warning below says so).
            providers = [CUDA, "CPUExecutionProvider"]
        with warnings.catch_warnings():
            # ONNX Runtime's own "Specified provider ... is not in available provider
            # names": _report says it once, with what to install.
            warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
            self._session = load_session(
                context.artifacts[ARTIFACT],
                key=key,
                level=level,
                providers=providers,
                allow_options=tuple(config.get("allow_options") or ()),
            )
        self._inputs = input_specs(self._session)
        requested = [p if isinstance(p, str) else p[0] for p in providers or default_providers()]
        running = list(self._session.get_providers())
        self._facts = ServingFacts(
            title=config.get("title"),
            key_id=key.key_id,
            level=key.level if level is None else level,
            levels=key.levels,
            providers=running,
            requested_providers=requested,
            cuda_requested=CUDA in requested,
            cuda_running=CUDA in running,
            inputs=_io(self._session.get_inputs()),
            outputs=_io(self._session.get_outputs()),
        )
        _report(self._facts)

    def describe(self) -> dict[str, Any]:
        """What this model serves, as a plain dict (the fields of :class:`ServingFacts`).

        Reach it through MLflow with ``pyfunc_model.unwrap_python_model().describe()``.

        Raises:
            RuntimeError: the model was not loaded (``load_context`` not called).
        """
        if self._facts is None:
            raise RuntimeError("the model is not loaded: MLflow calls load_context first")
        return asdict(self._facts)

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: ModelInput,
        params: dict[str, Any] | None = None,
    ) -> ModelOutput:
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
        first checks the input against the recorded signature (see ``log_model``).

        Returns:
            A single-output model: its output, a ``numpy.ndarray`` (one row per
            sample). Several outputs: output name -> ``numpy.ndarray``, in the
            model's output order. The same for every input form.

        Raises:
            ValueError: the input does not fit the model's inputs.
            RuntimeError: the model was not loaded (``load_context`` not called).
        """
        if self._session is None:
            raise RuntimeError("the model is not loaded: MLflow calls load_context first")
        feeds = to_feeds(model_input, self._inputs)
        outputs = [np.asarray(v) for v in self._session.run(None, feeds)]
        if len(outputs) == 1:
            return outputs[0]
        return {
            meta.name: value
            for meta, value in zip(self._session.get_outputs(), outputs, strict=True)
        }


def provider_specs(value: Any) -> list[str | tuple[str, Mapping[str, Any]]] | None:
    """Providers as configured (JSON has no tuples: ``[name, {options}]`` pairs too).

    Raises:
        ValueError: an entry that is neither a name nor a ``[name, {options}]`` pair.
    """
    if not value:
        return None
    out: list[str | tuple[str, Mapping[str, Any]]] = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif (
            isinstance(item, Sequence)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], Mapping)
        ):
            out.append((item[0], dict(item[1])))
        else:
            raise ValueError(
                f"providers: each entry is a provider name or [name, {{options}}], got {item!r}"
            )
    return out


def _io(values: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"name": v.name, "type": v.type, "shape": [d if d != "" else None for d in v.shape]}
        for v in values
    ]


def _report(facts: ServingFacts) -> None:
    if not logger.hasHandlers() and logger.level == logging.NOTSET:
        # Nothing configured logging (a bare `mlflow models serve`): say it on stderr,
        # as MLflow does for its own loggers, rather than drop the line.
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y/%m/%d %H:%M:%S"
            )
        )
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logger.info(
        "onnx-selenc model %s: key id %s, level %d/%d restored, providers %s",
        repr(facts.title) if facts.title else "(untitled)",
        facts.key_id,
        facts.level,
        facts.levels,
        ", ".join(facts.providers),
    )
    if facts.cuda_requested and not facts.cuda_running:
        message = (
            f"{CUDA} was asked for but ONNX Runtime runs this model on "
            f"{', '.join(facts.providers)}: " + _cuda_hint()
        )
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)


def _cuda_hint() -> str:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return "the installed onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    return "its CUDA provider did not load (CUDA or cuDNN libraries; ONNX Runtime logged why)"
