"""Which backends can be deployed to. Each entry names the artifact builder and runtime it uses;
a new target (e.g. tvm-cpu, built on branch `tvm`) registers here with its own builder: it gets
the same inputs — `params.model_layers` (learned integers and scales), `modules.transform_module`
(float twins with the sub-pixel rewrite), `int_hyper` — and writes its compiled modules into the
profile folders next to (or instead of) the ONNX files."""

from __future__ import annotations

TARGETS = {
    "ort-cpu": "ONNX with explicit QDQ, ONNX Runtime CPUExecutionProvider (dqsearch.deploy.runtime)",
}
PLANNED = {
    "tvm-cpu": "compile the same float twins with TVM (branch tvm)",
    "tvm-arm": "cross-compile the same float twins with TVM (branch tvm)",
    "ort-cuda": "the ort-cpu artifacts on CUDAExecutionProvider (needs onnxruntime-gpu)",
    "ort-tensorrt": "the ort-cpu artifacts on TensorrtExecutionProvider (needs onnxruntime-gpu)",
}


def check_backend(name: str) -> None:
    if name in TARGETS:
        return
    if name in PLANNED:
        raise ValueError(f"deployment to {name} is not implemented yet ({PLANNED[name]}); "
                         f"implemented: {', '.join(TARGETS)}")
    raise ValueError(f"unknown deployment backend {name!r}; implemented: {', '.join(TARGETS)}")
