"""dqsearch-ort: ONNX Runtime backends (`ort-cpu`, `ort-cuda`, `ort-tensorrt`).

Every graph timed is the graph `dqsearch export --backend ort-cpu` deploys (`qdq`, a thin layer
over `deployment.transform_graph`): QLinearConv for the int8 layers of g_a/g_s (deconvolutions in
sub-pixel form), the learned per-channel QDQ around float convs elsewhere (uint8 or uint16
activations), none for FP32, and the integer h_s in numpy. Bit-widths sharing a program share its
latency: 2–7 bits (int8 weights without zero-points), 8 bits (`int8-zp`: with them), 9–16, 32.
"""

from .backend import OrtBackend, cpu, cuda, tensorrt

__all__ = ["OrtBackend", "cpu", "cuda", "tensorrt"]
