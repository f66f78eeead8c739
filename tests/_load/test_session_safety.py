"""check_session_options: an allow-list of provider options, and the dumps and caches
that session config entries and environment variables switch on are refused."""

from __future__ import annotations

from typing import Any

import onnxruntime as ort
import pytest

from onnx_selenc._load.safety import check_session_options
from onnx_selenc.exceptions import UnsafeSessionOptions

TRT = "TensorrtExecutionProvider"
MIGX = "MIGraphXExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _check(providers: list[Any], **kwargs: Any) -> None:
    kwargs.setdefault("environ", {})
    check_session_options(None, providers, **kwargs)


# --- provider options that write the model, its engines or its caches ------------------


@pytest.mark.parametrize(
    ("provider", "option", "value"),
    [
        (TRT, "trt_dump_subgraphs", True),  # named by issue 13
        (TRT, "trt_engine_cache_enable", "1"),
        (TRT, "trt_engine_cache_path", "/tmp/engines"),
        (TRT, "trt_timing_cache_enable", True),
        (TRT, "trt_timing_cache_path", "/tmp/timing"),
        (TRT, "trt_dump_ep_context_model", 1),
        (TRT, "trt_ep_context_file_path", "ctx.onnx"),
        (TRT, "trt_weight_stripped_engine_enable", "true"),
        (MIGX, "migraphx_save_compiled_model", "1"),  # named by issue 13
        (MIGX, "migraphx_save_model_path", "/tmp/model.mxr"),  # named by issue 13
        (MIGX, "migraphx_model_cache_dir", "/tmp/mxr"),
        ("OpenVINOExecutionProvider", "cache_dir", "/tmp/ov"),
        ("QNNExecutionProvider", "dump_json_qnn_graph", "1"),
        ("QNNExecutionProvider", "qnn_saver_path", "libQnnSaver.so"),
        ("CANNExecutionProvider", "dump_om_model", "1"),
    ],
)
def test_writing_provider_option_is_refused(provider: str, option: str, value: Any) -> None:
    with pytest.raises(UnsafeSessionOptions, match=option):
        _check([(provider, {option: value})])


def test_writing_option_is_refused_without_a_provider_name() -> None:
    # The loader passes the bare options of each (name, options) pair today.
    with pytest.raises(UnsafeSessionOptions, match="trt_dump_subgraphs"):
        _check([{"trt_dump_subgraphs": True}])


@pytest.mark.parametrize("value", [False, 0, "0", "false", "False", ""])
def test_writing_flag_that_is_off_is_accepted(value: Any) -> None:
    _check([(TRT, {"trt_engine_cache_enable": value, "trt_dump_subgraphs": value})])


@pytest.mark.parametrize("value", ["0", "false", "None"])
def test_path_option_is_refused_whatever_its_value(value: str) -> None:
    # "0" is a file name, not "off".
    with pytest.raises(UnsafeSessionOptions, match="trt_engine_cache_path"):
        _check([(TRT, {"trt_engine_cache_path": value})])


def test_allow_options_cannot_vouch_for_a_writing_option() -> None:
    with pytest.raises(UnsafeSessionOptions, match="allow_options cannot"):
        _check([(TRT, {"trt_dump_subgraphs": 1})], allow_options=["trt_dump_subgraphs"])


def test_coreml_is_refused_whatever_its_options() -> None:
    # It converts the model into a Core ML file in the temporary directory.
    for spec in ("CoreMLExecutionProvider", ("CoreMLExecutionProvider", {})):
        with pytest.raises(UnsafeSessionOptions, match="CoreMLExecutionProvider"):
            _check([spec])


# --- the allow-list -----------------------------------------------------------------


def test_safe_cuda_options_are_accepted() -> None:
    options = {
        "device_id": 0,
        "gpu_mem_limit": 8 << 30,
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": True,
        "enable_cuda_graph": "0",
        "tunable_op_enable": "1",
        "tunable_op_tuning_enable": "1",
        "prefer_nhwc": "0",
        "use_tf32": "1",
    }
    _check([(CUDA, options), "CPUExecutionProvider"])


def test_safe_tensorrt_options_are_accepted() -> None:
    options = {
        "device_id": 0,
        "trt_max_workspace_size": 2 << 30,
        "trt_fp16_enable": True,
        "trt_bf16_enable": False,
        "trt_int8_enable": False,
        "trt_builder_optimization_level": 3,
        "trt_auxiliary_streams": -1,
        "trt_cuda_graph_enable": "1",
        "trt_profile_min_shapes": "x:1x3x224x224",
        "trt_profile_opt_shapes": "x:8x3x224x224",
        "trt_profile_max_shapes": "x:16x3x224x224",
        "trt_engine_cache_enable": False,  # a cache switch that is off
    }
    _check([(TRT, options), (CUDA, {"device_id": 0}), "CPUExecutionProvider"])


def test_provider_names_without_options_are_accepted() -> None:
    _check([TRT, CUDA, "CPUExecutionProvider", "SomeFutureExecutionProvider"])


def test_unknown_option_is_refused_with_a_way_to_allow_it() -> None:
    with pytest.raises(UnsafeSessionOptions, match=r"allow_options=\['cudnn_future_knob'\]"):
        _check([(CUDA, {"cudnn_future_knob": "1"})])


def test_allow_options_lets_an_unknown_option_through() -> None:
    _check([(CUDA, {"cudnn_future_knob": "1"})], allow_options=["cudnn_future_knob"])


def test_option_safe_on_one_provider_is_unknown_on_another() -> None:
    with pytest.raises(UnsafeSessionOptions, match="allow_options"):
        _check([(CUDA, {"trt_fp16_enable": True})])


def test_unknown_provider_with_options_is_refused() -> None:
    with pytest.raises(UnsafeSessionOptions, match="SomeFutureExecutionProvider"):
        _check([("SomeFutureExecutionProvider", {"device_id": 0})])
    _check([("SomeFutureExecutionProvider", {"device_id": 0})], allow_options=["device_id"])


def test_qnn_backend_type_is_safe_only_for_backends_that_run() -> None:
    _check([("QNNExecutionProvider", {"backend_type": "htp"})])
    with pytest.raises(UnsafeSessionOptions, match="backend_type"):
        _check([("QNNExecutionProvider", {"backend_type": "saver"})])


def test_no_option_is_both_safe_and_writing() -> None:
    # A bare mapping (no provider name) is checked against every provider's list: that is
    # sound only while no name is safe on one provider and a writer on another.
    from onnx_selenc._load import provider_options as po

    safe = set().union(*po.SAFE_OPTIONS.values())
    writers = {name for table in po.WRITING_OPTIONS.values() for name in table}
    assert not safe & writers


# --- session options and config entries --------------------------------------------


@pytest.mark.parametrize(
    ("entry", "value"),
    [
        ("ep.context_enable", "1"),
        ("ep.context_file_path", "ctx.onnx"),
        ("ep.context_model_external_initializers_file_name", "weights.bin"),
        ("session.optimized_model_external_initializers_file_name", "weights.bin"),
        ("session.save_external_prepacked_constant_initializers", "1"),
        ("session.debug_layout_transformation", "1"),
        ("session.optimized_model_filepath", "dump.onnx"),
        ("session.moe.offload.derived_cache_dir", "/tmp/moe"),
        ("session.moe.offload.allow_file_backing", "1"),
    ],
)
def test_writing_config_entry_is_refused(entry: str, value: str) -> None:
    so = ort.SessionOptions()
    so.add_session_config_entry(entry, value)
    with pytest.raises(UnsafeSessionOptions, match=entry.replace(".", r"\.")):
        check_session_options(so, environ={})


@pytest.mark.parametrize("entry", ["ep.context_enable", "session.debug_layout_transformation"])
def test_config_switch_that_is_off_is_accepted(entry: str) -> None:
    so = ort.SessionOptions()
    so.add_session_config_entry(entry, "0")
    check_session_options(so, environ={})


def test_optimized_model_filepath_is_refused() -> None:
    so = ort.SessionOptions()
    so.optimized_model_filepath = "dump.onnx"
    with pytest.raises(UnsafeSessionOptions, match="optimized_model_filepath"):
        check_session_options(so, environ={})


def test_profiling_is_accepted() -> None:
    # The profile holds node names, shapes, sizes and timings: no tensor values.
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    check_session_options(so, environ={})


@pytest.mark.skipif(not hasattr(ort.SessionOptions, "add_provider"), reason="onnxruntime < 1.22")
def test_providers_attached_to_session_options_are_refused() -> None:
    # Their options become config entries this check cannot list.
    so = ort.SessionOptions()
    so.add_provider("CPUExecutionProvider", {})
    with pytest.raises(UnsafeSessionOptions, match="add_provider"):
        check_session_options(so, environ={})


# --- environment variables ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ORT_TENSORRT_DUMP_SUBGRAPHS", "1"),  # named by issue 13
        ("ORT_TENSORRT_ENGINE_CACHE_ENABLE", "1"),
        ("ORT_TENSORRT_CACHE_PATH", "/tmp/trt"),
        ("ORT_TENSORRT_ENGINE_CACHE_PATH", "/tmp/trt"),
        ("ORT_TENSORRT_TIMING_CACHE_ENABLE", "1"),
        ("ORT_TENSORRT_GLOBAL_CACHE_PATH", "/tmp/trt"),
        ("ORT_DUMP_EP_CONTEXT_MODEL", "1"),
        ("ORT_TENSORRT_DUMP_EP_CONTEXT_MODEL", "1"),  # no such variable: caught by its name
        ("ORT_MIGRAPHX_SAVE_COMPILED_MODEL", "1"),
        ("ORT_MIGRAPHX_SAVE_COMPILE_PATH", "/tmp/m.mxr"),
        ("ORT_MIGRAPHX_MODEL_CACHE_PATH", "/tmp/mxr"),
        ("ORT_MIGRAPHX_DUMP_MODEL_OPS", "1"),
        ("ORT_DEBUG_NODE_IO_DUMP_INPUT_DATA", "1"),
        ("ORT_DEBUG_NODE_IO_DUMP_OUTPUT_DATA", "1"),
        ("ORT_DEBUG_NODE_IO_DUMP_DATA_DESTINATION", "files"),
        ("ORT_OPENVINO_ENABLE_DEBUG", "1"),
    ],
)
def test_dump_or_cache_variable_is_refused(name: str, value: str) -> None:
    with pytest.raises(UnsafeSessionOptions, match=rf"{name}.*unset"):
        check_session_options(None, environ={name: value})


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "", " "])
def test_variable_that_is_off_is_accepted(value: str) -> None:
    check_session_options(
        None,
        environ={"ORT_TENSORRT_DUMP_SUBGRAPHS": value, "ORT_DEBUG_NODE_IO_DUMP_INPUT_DATA": value},
    )


@pytest.mark.parametrize(
    "name",
    [
        "ORT_TENSORRT_CACHE_PATH",  # a path named "0"
        "ORT_OPENVINO_ENABLE_DEBUG",  # onnxruntime switches it on for any value
    ],
)
def test_variable_read_as_a_path_or_presence_is_refused_at_zero(name: str) -> None:
    with pytest.raises(UnsafeSessionOptions, match=name):
        check_session_options(None, environ={name: "0"})


@pytest.mark.parametrize(
    "name",
    [
        "ORT_TENSORRT_FP16_ENABLE",
        "ORT_DEBUG_NODE_IO_DUMP_SHAPE_DATA",  # shapes only
        "ORT_MIGRAPHX_DISABLE_COMPILED_MODEL_CACHING",  # turns a cache off
        "PATH",
    ],
)
def test_unrelated_variable_is_accepted(name: str) -> None:
    check_session_options(None, environ={name: "1"})


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORT_TENSORRT_DUMP_SUBGRAPHS", "1")
    with pytest.raises(UnsafeSessionOptions, match="ORT_TENSORRT_DUMP_SUBGRAPHS"):
        check_session_options(None)


def test_load_session_checks_each_provider_and_takes_allow_options(make_encrypted) -> None:
    """The loader passes the providers as given (each checked against its own list) and
    the names the caller vouches for."""
    import onnx_selenc as se
    from tests import tiny_models as tm

    enc, key = make_encrypted(tm.cnn())
    cpu = [("CPUExecutionProvider", {"my_option": "1"})]
    with pytest.raises(UnsafeSessionOptions, match="allow_options"):
        se.load_session(enc, key=key, providers=cpu)
    try:
        se.load_session(enc, key=key, providers=cpu, allow_options=["my_option"])
    except UnsafeSessionOptions:  # vouched for: must pass the check
        raise
    except Exception as exc:  # ONNX Runtime itself may reject an option it does not know
        assert type(exc).__module__.startswith("onnxruntime"), exc
