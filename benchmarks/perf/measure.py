"""Everything the performance benchmark measures on one model.

:func:`bench_model` runs the steps in order: the encrypted copies, the outputs and
the inference latency, the session builds (with the integrity-check floor), the
encryption times, and the peak memory of each operation in a fresh process.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import models as bench_models
from benchmarks import wholefile
from benchmarks.perf.results import (
    BIG_BUILD_REPEATS,
    BIG_ENCRYPT_REPEATS,
    CALIBRATION_SAMPLES,
    DATA_DRIVEN_RUNS,
    LEVELS,
    MIDDLE,
    ModelResult,
    Settings,
)
from benchmarks.perf.timing import child_peak, fresh_process_builds, interleaved, timed
from benchmarks.report import Stat
from onnx_selenc._crypto import seal as _seal

# Calibration input shapes (one sample) where the timing input would make the data-driven
# encryption take many minutes (it runs the model a few times per conv layer).
# Only dimensions the model leaves free are taken from here.
CALIBRATION_SHAPES = {
    "ppocr_v4_det": (3, 96, 96),
    "nudenet_320n": (3, 128, 128),
    "ppocr_v4_rec": (3, 48, 160),
}

Log = Callable[[str], None]


@dataclass(frozen=True)
class _Copies:
    """The encrypted copies of one model.

    Attributes:
        model: the selectively encrypted model.
        key: its owner key file.
        whole_file: the whole-file AES-GCM copy and its key; None where not applicable.
    """

    model: Path
    key: Path
    whole_file: tuple[Path, bytes] | None


class _Scratch:
    """An output folder emptied before each use, with a new key file name each time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._count = itertools.count()

    def fresh(self) -> Path:
        """Empty the folder; return a key file path in it not used before."""
        self.remove()
        self.folder.mkdir()
        return self.folder / f"k{next(self._count)}.key"

    def remove(self) -> None:
        """Remove the folder and what it holds."""
        shutil.rmtree(self.folder, ignore_errors=True)


def bench_model(bm: bench_models.BenchModel, settings: Settings, work: Path) -> ModelResult:
    """All measurements on one model.

    Args:
        bm: the model.
        settings: the run's choices.
        work: an empty folder for the copies (removed by the caller).

    Returns:
        The model's figures.
    """
    result = ModelResult(bm.name, bm.size_bytes / 1e6)
    big = bm.size_bytes > 2**31
    log = _logger(bm.name)
    copies = _encrypted_copies(bm, work, big, result, log)
    _outputs_and_inference(bm, copies, settings, result, log)
    _session_builds(bm, copies, settings, big, result, log)
    scratch = _Scratch(work / "out")
    _encryption(bm, settings, big, scratch, result, log)
    _peak_memory(bm, copies, settings.providers, scratch, result, log)
    return result


def _encrypted_copies(
    bm: bench_models.BenchModel, work: Path, big: bool, result: ModelResult, log: Log
) -> _Copies:
    """Encrypt the model with onnx-selenc, and as a whole file where the baseline applies."""
    import onnx_selenc as se

    enc_dir = work / "enc"
    enc_dir.mkdir()
    seconds, enc = timed(
        lambda: se.encrypt(
            bm.path,
            enc_dir / bm.path.name,
            key_file=enc_dir / "owner.key",
            options=se.EncryptOptions(levels=LEVELS, seed=0),
        )
    )
    log(f"encrypted in {seconds:.1f} s")
    wf = None
    if bm.external or big:
        result.notes.append(
            "whole-file baseline not applicable: InferenceSession(bytes) takes one serialised "
            "model, which protobuf limits to 2 GB, and cannot carry external data"
        )
    else:
        wf_path = work / (bm.path.name + ".aesgcm")
        wf = (wf_path, wholefile.encrypt_file(bm.path, wf_path))
    return _Copies(enc.model_files[0], enc.key_file, wf)


def _outputs_and_inference(
    bm: bench_models.BenchModel, copies: _Copies, settings: Settings, result: ModelResult, log: Log
) -> None:
    """Compare the outputs of level 0 and the top level with the plain model's; time runs."""
    import onnxruntime as ort

    import onnx_selenc as se

    rng = np.random.default_rng(0)
    feeds = {bm.input_name: rng.standard_normal(bm.input_shape, dtype=np.float32)}
    providers = settings.providers
    plain_session = ort.InferenceSession(str(bm.path), providers=providers)
    ref = plain_session.run(None, feeds)
    # One restored session at a time beside the plain one (the 2.4 GB model).
    level0 = se.load_session(copies.model, key=copies.key, level=0, providers=providers)
    result.level0_differs = not all(
        np.array_equal(a, b) for a, b in zip(ref, level0.run(None, feeds), strict=True)
    )
    del level0
    restored = se.load_session(copies.model, key=copies.key, providers=providers)
    result.providers_used = {
        "plain": plain_session.get_providers(),
        "load_session": restored.get_providers(),
    }
    top = restored.run(None, feeds)
    result.outputs_equal = all(np.array_equal(a, b) for a, b in zip(ref, top, strict=True))
    log(f"top level equals plain: {result.outputs_equal}; level 0 differs: {result.level0_differs}")
    measure_inference(result, plain_session, restored, feeds, settings.inference_seconds)
    del plain_session, restored
    log("inference " + ", ".join(f"{k} {v.ms()} ms" for k, v in result.inference.items()))


def _session_builds(
    bm: bench_models.BenchModel,
    copies: _Copies,
    settings: Settings,
    big: bool,
    result: ModelResult,
    log: Log,
) -> None:
    """Time the session builds, interleaved, then the integrity check's floor."""
    providers = settings.providers
    repeats = max(1, settings.repeats if not big else min(settings.repeats, BIG_BUILD_REPEATS))
    if big:
        specs: dict[str, dict[str, Any]] = {
            "plain": {"task": "plain", "model": str(bm.path), "providers": providers}
        }
        for level in (0, MIDDLE, LEVELS):
            specs[f"L{level}"] = {
                "task": "load",
                "model": str(copies.model),
                "key": str(copies.key),
                "level": level,
                "providers": providers,
            }
        # Every level reads the external data into memory and hands it over (level 0 too).
        fresh_process_builds(specs, [f"L{level}" for level in (0, MIDDLE, LEVELS)], repeats, result)
        result.notes.append(
            "session builds timed in a fresh process each (benchmarks.peak), interleaved"
        )
    else:
        variants = build_variants(bm.path, copies.model, copies.key, copies.whole_file, providers)
        interleaved(variants, 1, {})  # an untimed warm-up round
        interleaved(variants, repeats, result.build, result.build_cpu, result.build_sequence)
    log("build " + ", ".join(f"{k} {v.ms()}" for k, v in result.build.items()))
    # The floor of the integrity check every load does: one level tag (AES-GMAC) over the
    # model's bytes; and, for scale, one SHA-256 pass (what the check cost before).
    files = [bm.path, bm.path.with_name(bm.path.name + ".data")]
    blob = b"".join(f.read_bytes() for f in files if f.exists())

    def gmac() -> None:
        tagger = _seal.new_model_tagger(bytes(32))
        tagger.update(blob)
        tagger.result()

    interleaved(
        {"gmac": gmac, "sha256": lambda: hashlib.sha256(blob).digest()}, repeats, result.build
    )


def _encryption(
    bm: bench_models.BenchModel,
    settings: Settings,
    big: bool,
    scratch: _Scratch,
    result: ModelResult,
    log: Log,
) -> None:
    """Time the data-free (and data-driven) encryption, interleaved with load + save."""
    import onnx

    import onnx_selenc as se

    encrypt_reps = BIG_ENCRYPT_REPEATS if big else settings.encrypt_repeats
    calibration = None if big or not settings.data_driven else calibration_for(bm)
    if calibration is not None:
        result.calibration = "x".join(map(str, next(iter(calibration.feeds.values())).shape))
    if big and settings.data_driven:
        result.notes.append("data-driven encryption not run on the model over 2 GB")
    out = scratch.folder

    def load_save() -> None:
        scratch.fresh()
        model = onnx.load(str(bm.path))
        if bm.external:
            onnx.save(
                model,
                str(out / bm.path.name),
                save_as_external_data=True,
                location=bm.path.name + ".data",
            )
        else:
            onnx.save(model, str(out / bm.path.name))

    def data_free() -> None:
        se.encrypt(
            bm.path, out / bm.path.name, key_file=scratch.fresh(), options=se.EncryptOptions(seed=0)
        )

    def data_driven() -> None:
        key_file = scratch.fresh()
        se.encrypt(
            bm.path,
            out / bm.path.name,
            key_file=key_file,
            options=se.EncryptOptions(seed=0),
            calibration=calibration,
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interleaved({"load+save": load_save, "data-free": data_free}, encrypt_reps, result.encrypt)
        if calibration is not None:
            try:
                interleaved({"data-driven": data_driven}, DATA_DRIVEN_RUNS, result.encrypt)
            except Exception as exc:  # report it, keep the other measurements
                result.notes.append(f"data-driven encryption failed: {exc!s:.300}")
    scratch.remove()
    log("encrypt " + ", ".join(f"{k} {v.seconds()} s" for k, v in result.encrypt.items()))


def _peak_memory(
    bm: bench_models.BenchModel,
    copies: _Copies,
    providers: list[str] | None,
    scratch: _Scratch,
    result: ModelResult,
    log: Log,
) -> None:
    """Peak memory of each operation, alone in a fresh process."""
    specs: dict[str, dict[str, Any]] = {
        "plain": {"task": "plain", "model": str(bm.path)},
        "load_session": {"task": "load", "model": str(copies.model), "key": str(copies.key)},
        "encrypt": {"task": "encrypt", "model": str(bm.path)},
        "load+save": {"task": "load_save", "model": str(bm.path), "external": bm.external},
    }
    if copies.whole_file is not None:
        wf_path, aes_key = copies.whole_file
        specs["whole-file"] = {"task": "whole", "model": str(wf_path), "aes_key": aes_key.hex()}
    for name, spec in specs.items():
        spec["providers"] = providers
        if spec["task"] in ("encrypt", "load_save"):
            spec["out"] = str(scratch.fresh().parent)
        measured = child_peak(spec)
        result.memory.setdefault(name, Stat()).add(measured["peak_mb"])
        result.memory.setdefault(f"{name} (imports)", Stat()).add(measured["imports_mb"])
    scratch.remove()
    log(
        "memory "
        + ", ".join(f"{k} {v.mb()} MB" for k, v in result.memory.items() if "imports" not in k)
    )


def build_variants(
    plain: Path, enc: Path, key: Path, wf: tuple[Path, bytes] | None, providers: list[str] | None
) -> dict[str, Callable[[], Any]]:
    """The session builds to compare (providers as given, the same for all).

    Args:
        plain: the plain model.
        enc: its selectively encrypted copy.
        key: the owner key of ``enc``.
        wf: the whole-file AES-GCM copy and its key; None: no whole-file variant.
        providers: execution providers; None: ONNX Runtime's default.

    Returns:
        One call per variant: ``plain``, ``whole-file``, ``L0``, the middle and the top level.
    """
    import onnxruntime as ort

    import onnx_selenc as se

    variants: dict[str, Callable[[], Any]] = {
        "plain": lambda: ort.InferenceSession(str(plain), providers=providers)
    }
    if wf is not None:
        variants["whole-file"] = lambda: wholefile.load_session(wf[0], wf[1], providers)
    for level in (0, MIDDLE, LEVELS):
        variants[f"L{level}"] = lambda level=level: se.load_session(
            enc, key=key, level=level, providers=providers
        )
    return variants


def measure_inference(
    result: ModelResult,
    plain_session: Any,
    restored: Any,
    feeds: dict[str, np.ndarray],
    seconds: float,
) -> None:
    """Alternate runs of the two sessions on one fixed input (wall and process CPU time).

    Args:
        result: receives ``plain``, ``restored`` and their ``cpu`` times per run.
        plain_session: the plain model's session.
        restored: the top level's session.
        feeds: the one input.
        seconds: about how long all runs take (10 to 1000 runs of each).
    """
    plain_session.run(None, feeds)
    restored.run(None, feeds)
    single, _ = timed(lambda: plain_session.run(None, feeds))
    runs = int(max(10, min(1000, seconds / max(single, 1e-4))))
    sessions = {"plain": plain_session, "restored": restored}
    for i in range(runs):
        order = ("plain", "restored") if i % 2 == 0 else ("restored", "plain")
        for name in order:
            sess = sessions[name]
            cpu = time.process_time()
            t, _ = timed(lambda sess=sess: sess.run(None, feeds))
            result.inference.setdefault(name, Stat()).add(t)
            result.inference.setdefault(f"{name} cpu", Stat()).add(time.process_time() - cpu)


def calibration_for(bm: bench_models.BenchModel) -> Any:
    """Random normal inputs of the model's input shape (smaller where it is free).

    Args:
        bm: the model.

    Returns:
        A ``Calibration`` of :data:`CALIBRATION_SAMPLES` inputs.
    """
    import onnx

    from onnx_selenc._select.calibration import Calibration

    model = onnx.load(str(bm.path), load_external_data=False)
    info = next(i for i in model.graph.input if i.name == bm.input_name)
    fixed = [d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim]
    wanted = CALIBRATION_SHAPES.get(bm.name, bm.input_shape[1:])
    shape = tuple(f if f > 0 else w for f, w in zip(fixed[1:], wanted, strict=True))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((CALIBRATION_SAMPLES, *shape), dtype=np.float32)
    return Calibration({bm.input_name: data})


def _logger(name: str) -> Log:
    """Progress lines on stderr, with the time and the model's name."""

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {message}", file=sys.stderr, flush=True)

    return log
