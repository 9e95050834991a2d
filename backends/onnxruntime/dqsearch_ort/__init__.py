"""dqsearch-ort: ONNX Runtime backends (`ort-cpu`, `ort-cuda`, `ort-tensorrt`).

Each layer (or whole transform) is exported to ONNX and given explicit QuantizeLinear /
DequantizeLinear nodes at its container precision — uint8 activations and int8 weights for
≤ 8 bits, uint16/int16 for ≤ 16, none for FP32 — so ONNX Runtime picks the kernels a deployed
model would get (QLinearConv where one exists). Bit-widths below a container's width only change
scales, not the program, so they share its latency.
"""

from .backend import OrtBackend, cpu, cuda, tensorrt

__all__ = ["OrtBackend", "cpu", "cuda", "tensorrt"]
