"""Backend plugins: the contract (`base`: Backend and its optional Deployment part), tracing, the
entry-point registry, table profiling, validation and the conformance suite (`testing`)."""

from .base import (
    FP32,
    Backend,
    ContextProfile,
    Deployment,
    LayerSpec,
    Measurement,
    ModelTrace,
    OpSpec,
    container_of,
    extract_layer_specs,
    float_model,
    parse_input_shape,
    trace_model,
)
from .host import cpu_model, cpu_signature
from .registry import (
    GROUP,
    BackendError,
    BackendInfo,
    OptionRequired,
    available_backends,
    inspect_backends,
    load_backend,
)

__all__ = [
    "FP32",
    "GROUP",
    "Backend",
    "BackendError",
    "BackendInfo",
    "ContextProfile",
    "Deployment",
    "LayerSpec",
    "Measurement",
    "ModelTrace",
    "OpSpec",
    "OptionRequired",
    "available_backends",
    "container_of",
    "cpu_model",
    "cpu_signature",
    "extract_layer_specs",
    "float_model",
    "inspect_backends",
    "load_backend",
    "parse_input_shape",
    "trace_model",
]
