"""What ONNX Runtime may write to disk: the tables :mod:`onnx_selenc._load.safety` checks.

``SAFE_OPTIONS`` is an allow-list, per execution provider, of the provider options that
never write anything (device ids, memory limits, arenas, algorithm search, streams,
precision flags). An option not on it is refused unless the caller vouches for it.
``WRITING_OPTIONS`` names the options known to dump or cache the model, its compiled
engines or their tuning data, so that their refusals say so (and no caller can vouch for
them). Options that only read (calibration tables, plugin or backend libraries, compiled
models to load) are on neither list: they are unknown, and the caller may allow them.

Sources (option names as ONNX Runtime parses them, 1.18 to 1.32):

- CUDA: ``onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc``
  (``provider_option_names``) and docs/execution-providers/CUDA-ExecutionProvider.
- TensorRT: ``onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_info.cc``,
  ``include/onnxruntime/core/providers/tensorrt/tensorrt_provider_options.h`` and
  docs/execution-providers/TensorRT-ExecutionProvider ("TensorRT EP Caches").
- ROCm: ``onnxruntime/core/providers/rocm/rocm_execution_provider_info.cc``.
- MIGraphX: ``onnxruntime/core/providers/migraphx/migraphx_execution_provider_info.h``
  (``migraphx_provider_option``); the save/load options of ONNX Runtime <= 1.22.
- OpenVINO: ``onnxruntime/core/providers/openvino/contexts.h`` (``valid_provider_keys``).
- DirectML: docs/execution-providers/DirectML-ExecutionProvider.
- QNN: docs/execution_providers/QNN-ExecutionProvider.md ("EP Provider Options").
- CANN: ``include/onnxruntime/core/providers/cann/cann_provider_options.h``.
- DNNL, XNNPACK: their provider factories (``use_arena``, ``intra_op_num_threads``).
- Session config entries: ``onnxruntime_session_options_config_keys.h`` and the keys in
  the 1.32 ``libonnxruntime.so``.
- Environment variables: ``tensorrt_env_vars`` (tensorrt_execution_provider.h),
  ``migraphx_env_vars`` (migraphx_execution_provider.h, and the AMD plugin EP),
  ``debug_node_inputs_outputs_env_vars`` (debug_node_inputs_outputs_utils.h) and
  ``backend_utils::IsDebugEnabled`` (OpenVINO).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

# How a value switches a writer on. "flag": off when "", "0" or "false". "path": a file
# or directory name, on whenever given ("0" is a name). "presence": onnxruntime tests
# only that the variable is set, so "0" switches it on too.
Kind = Literal["flag", "path", "presence"]

_GPU_MEMORY = frozenset(
    {
        "device_id",
        "gpu_mem_limit",
        "arena_extend_strategy",
        "do_copy_in_default_stream",
        "has_user_compute_stream",
        "user_compute_stream",
        "gpu_external_alloc",
        "gpu_external_free",
        "gpu_external_empty_cache",
        "tunable_op_enable",
        "tunable_op_tuning_enable",
        "tunable_op_max_tuning_duration_ms",
    }
)

SAFE_OPTIONS: Mapping[str, frozenset[str]] = {
    "CPUExecutionProvider": frozenset(),
    "CUDAExecutionProvider": _GPU_MEMORY
    | {
        "cudnn_conv_algo_search",
        "cudnn_conv_use_max_workspace",
        "cudnn_conv1d_pad_to_nc1d",
        "enable_cuda_graph",
        "enable_skip_layer_norm_strict_mode",
        "prefer_nhwc",
        "use_ep_level_unified_stream",
        "use_tf32",
        "fuse_conv_bias",
        "sdpa_kernel",
    },
    "TensorrtExecutionProvider": frozenset(
        {
            "device_id",
            "has_user_compute_stream",
            "user_compute_stream",
            "trt_max_partition_iterations",
            "trt_min_subgraph_size",
            "trt_max_workspace_size",
            "trt_fp16_enable",
            "trt_bf16_enable",
            "trt_int8_enable",
            "trt_dla_enable",
            "trt_dla_core",
            "trt_force_sequential_engine_build",
            "trt_context_memory_sharing_enable",
            "trt_layer_norm_fp32_fallback",
            "trt_detailed_build_log",  # to the log, not to a file
            "trt_build_heuristics_enable",
            "trt_sparsity_enable",
            "trt_builder_optimization_level",
            "trt_auxiliary_streams",
            "trt_tactic_sources",
            "trt_profile_min_shapes",
            "trt_profile_max_shapes",
            "trt_profile_opt_shapes",
            "trt_cuda_graph_enable",
            "trt_engine_hw_compatible",
            "trt_op_types_to_exclude",
        }
    ),
    "ROCMExecutionProvider": _GPU_MEMORY
    | {"miopen_conv_exhaustive_search", "miopen_conv_use_max_workspace", "enable_hip_graph"},
    "MIGraphXExecutionProvider": frozenset(
        {
            "device_id",
            "migraphx_fp16_enable",
            "migraphx_bf16_enable",
            "migraphx_fp8_enable",
            "migraphx_int8_enable",
            "migraphx_int8_use_native_calibration_table",
            "migraphx_exhaustive_tune",
            "migraphx_mem_limit",
            "migraphx_arena_extend_strategy",
            "migraphx_external_alloc",
            "migraphx_external_free",
            "migraphx_external_empty_cache",
            "migraphx_max_dynamic_batch",
            "migraphx_max_compiled_models",
        }
    ),
    "OpenVINOExecutionProvider": frozenset(
        {
            "device_type",
            "device_id",
            "device_luid",
            "precision",
            "num_of_threads",
            "model_priority",
            "num_streams",
            "enable_opencl_throttling",
            "enable_qdq_optimizer",
            "enable_causallm",
            "disable_dynamic_shapes",
            "reshape_input",
            "layout",
            "context",
        }
    ),  # not load_config: its OpenVINO properties can name a CACHE_DIR
    "DmlExecutionProvider": frozenset(
        {
            "device_id",
            "performance_preference",
            "device_filter",
            "disable_metacommands",
            "enable_graph_capture",
        }
    ),
    "QNNExecutionProvider": frozenset(
        {
            "backend_type",  # see SAFE_VALUES
            "device_id",
            "htp_performance_mode",
            "htp_graph_finalization_optimization_mode",
            "qnn_context_priority",
            "soc_model",
            "htp_arch",
            "vtcm_mb",
            "rpc_control_latency",
            "enable_htp_fp16_precision",
            "htp_bf16_enable",
            "offload_graph_io_quantization",
            "enable_htp_spill_fill_buffer",
            "enable_htp_shared_memory_allocator",
            "enable_block_quant_weight_optimization",
            "extended_udma",
            "num_graph_prepare_threads",
            "skip_qnn_version_check",
        }
    ),
    "CANNExecutionProvider": frozenset(
        {
            "device_id",
            "npu_mem_limit",
            "arena_extend_strategy",
            "enable_cann_graph",
            "enable_cann_subgraph",
            "precision_mode",
            "op_select_impl_mode",
            "optypelist_for_implmode",
        }
    ),
    "DnnlExecutionProvider": frozenset({"use_arena"}),
    "XnnpackExecutionProvider": frozenset({"intra_op_num_threads"}),
    # It sends inputs to a remote endpoint; no option of it is vouched for here.
    "AzureExecutionProvider": frozenset(),
}

# Options on SAFE_OPTIONS whose safety depends on the value: QNN's "saver" and "ir"
# backends write the graph and its weights to files.
SAFE_VALUES: Mapping[tuple[str, str], frozenset[str]] = {
    ("QNNExecutionProvider", "backend_type"): frozenset({"cpu", "gpu", "htp"}),
}

WRITING_OPTIONS: Mapping[str, Mapping[str, Kind]] = {
    "TensorrtExecutionProvider": {
        "trt_dump_subgraphs": "flag",  # each TensorRT subgraph as ONNX, with its weights
        "trt_engine_cache_enable": "flag",
        "trt_engine_cache_path": "path",
        "trt_engine_cache_prefix": "path",
        "trt_timing_cache_enable": "flag",
        "trt_timing_cache_path": "path",
        "trt_dump_ep_context_model": "flag",
        "trt_ep_context_file_path": "path",
        "trt_weight_stripped_engine_enable": "flag",  # serialises the refitted engine
    },
    "MIGraphXExecutionProvider": {
        "migraphx_save_compiled_model": "flag",
        "migraphx_save_model_path": "path",
        "migraphx_save_model_name": "path",
        "migraphx_model_cache_dir": "path",
    },
    "OpenVINOExecutionProvider": {"cache_dir": "path"},
    "QNNExecutionProvider": {
        "qnn_saver_path": "path",
        "dump_json_qnn_graph": "flag",
        "json_qnn_graph_dir": "path",
        "dump_qnn_ir_dlc": "flag",
        "dump_qnn_ir_dlc_dir": "path",
    },
    "CANNExecutionProvider": {"dump_graphs": "flag", "dump_om_model": "flag"},
}

# Providers that write the model whatever their options.
WRITING_PROVIDERS: Mapping[str, str] = {
    "CoreMLExecutionProvider": (
        "converts the model, weights included, into a Core ML file in the temporary "
        "directory whatever its options"
    ),
}

# Session config entries (SessionOptions.add_session_config_entry) that write files.
WRITING_CONFIG_ENTRIES: Mapping[str, Kind] = {
    "ep.context_enable": "flag",
    "ep.context_file_path": "path",
    "ep.context_model_external_initializers_file_name": "path",
    "session.optimized_model_filepath": "path",
    "session.optimized_model_external_initializers_file_name": "path",
    "session.save_external_prepacked_constant_initializers": "flag",
    "session.debug_layout_transformation": "flag",  # post_layout_transform_step_<n>.onnx
    "session.moe.offload.derived_cache_dir": "path",
    "session.moe.offload.allow_file_backing": "flag",
}

# Environment variables onnxruntime reads for dumps and caches.
WRITING_ENV_VARS: Mapping[str, Kind] = {
    "ORT_TENSORRT_DUMP_SUBGRAPHS": "flag",
    "ORT_TENSORRT_ENGINE_CACHE_ENABLE": "flag",
    "ORT_TENSORRT_CACHE_PATH": "path",
    "ORT_TENSORRT_ENGINE_CACHE_PATH": "path",
    "ORT_TENSORRT_CACHE_PREFIX": "path",
    "ORT_TENSORRT_TIMING_CACHE_ENABLE": "flag",
    "ORT_TENSORRT_GLOBAL_CACHE_PATH": "path",
    "ORT_TENSORRT_WEIGHT_STRIPPED_ENGINE_ENABLE": "flag",
    "ORT_DUMP_EP_CONTEXT_MODEL": "flag",
    "ORT_MIGRAPHX_DUMP_MODEL_OPS": "flag",  # the ONNX model with its weights, to the cwd
    "ORT_MIGRAPHX_SAVE_COMPILED_MODEL": "flag",
    "ORT_MIGRAPHX_SAVE_COMPILE_PATH": "path",
    "ORT_MIGRAPHX_SAVE_COMPILED_PATH": "path",
    "ORT_MIGRAPHX_MODEL_CACHE_PATH": "path",
    "ORT_MIGRAPHX_CACHE_DIR": "path",
    "ORT_MIGRAPHX_DUMP_SUBGRAPHS": "flag",
    "ORT_MIGRAPHX_DUMP_EP_CONTEXT_MODEL": "flag",
    "ORT_OPENVINO_ENABLE_DEBUG": "presence",  # dumps the subgraphs it is given
    "OV_USE_COMPILED_NETWORK": "presence",
    # Debug builds: tensor values, weights among the node inputs.
    "ORT_DEBUG_NODE_IO_DUMP_INPUT_DATA": "flag",
    "ORT_DEBUG_NODE_IO_DUMP_OUTPUT_DATA": "flag",
    "ORT_DEBUG_NODE_IO_DUMP_DATA_DESTINATION": "path",
    "ORT_DEBUG_NODE_IO_OUTPUT_DIR": "path",
    "ORT_DEBUG_NODE_IO_SQLITE_DB_PREFIX": "path",
    "ORT_DEBUG_NODE_IO_DUMPING_DATA_TO_FILES_FOR_ALL_NODES_IS_OK": "flag",
}

# Any other ORT_ variable whose name says dump, cache, save or EP context is refused too
# (a flag), unless it turns something off or only prints shapes.
WRITING_ENV_WORDS = ("DUMP", "CACHE", "SAVE", "EP_CONTEXT")
HARMLESS_ENV_VARS = frozenset(
    {"ORT_DEBUG_NODE_IO_DUMP_SHAPE_DATA", "ORT_DEBUG_NODE_IO_DUMP_NODE_PLACEMENT"}
)
