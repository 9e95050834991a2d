"""The three analytical cost models. Each returns seconds for one layer at one bit-width.

Every model is a roofline: max(compute time, memory time) plus a fixed per-layer overhead, with
memory traffic = (weights + input + output elements) × bits / 8 bytes, i.e. data packed at the
layer's bit-width (FP32 layers and non-quantized ops move `float.bytes_per_element` per value).
Only the compute term differs between kinds:

- bit-serial (Stripes): activations stream one bit per cycle, weights are bit-parallel, so
  cycles = MACs · b / macs_per_cycle — latency ∝ activation bits;
- bitfusion: 2-bit × 2-bit bricks fuse into wider multipliers, a b_a × b_w product needs
  ⌈b_a/2⌉·⌈b_w/2⌉ bricks: cycles = MACs · ⌈b_a/2⌉·⌈b_w/2⌉ / bricks_per_cycle;
- roofline NPU: the narrowest integer datapath that holds b bits runs the layer at its peak
  MACs/cycle (int4, int8, int16…), FP32 layers run on the float unit.
"""

from __future__ import annotations

import math

from dqsearch.backends import LayerSpec, OpSpec

from .spec import FP32, Datapath, DeviceSpec


def datapath(spec: DeviceSpec, bits: int) -> Datapath:
    return next(d for d in spec.datapaths if d.max_bits >= bits)


def container(spec: DeviceSpec, bits: int) -> str:
    """The storage/compute type a bit-width runs in on this device (transitions key on it)."""
    if bits == FP32:
        return spec.float_name
    if spec.kind == "roofline":
        return datapath(spec, bits).name
    if spec.kind == "bitfusion":
        return f"int{2 * math.ceil(bits / 2)}"
    return f"int{bits}"


def _storage_bits(spec: DeviceSpec, bits: int) -> int:
    if bits == FP32:
        return 8 * spec.float_bytes
    return datapath(spec, bits).storage_bits if spec.kind == "roofline" else bits


def compute_cycles(spec: DeviceSpec, layer: LayerSpec, bits: int) -> float:
    if bits == FP32:
        return layer.macs / spec.float_macs_per_cycle
    p = spec.params
    if spec.kind == "bit-serial":
        return layer.macs * bits / p["macs_per_cycle"]
    if spec.kind == "bitfusion":
        bricks = math.ceil(bits / 2) * math.ceil(bits / 2)  # weights and activations share b
        return layer.macs * bricks / p["bricks_per_cycle"]
    return layer.macs / datapath(spec, bits).macs_per_cycle


def layer_seconds(spec: DeviceSpec, layer: LayerSpec, bits: int) -> float:
    compute = compute_cycles(spec, layer, bits) / (spec.clock_mhz * 1e6)
    elements = layer.weight_count + layer.input_elements + layer.output_elements
    memory = elements * _storage_bits(spec, bits) / 8 / (spec.bandwidth_gb_s * 1e9)
    return max(compute, memory) + spec.layer_us * 1e-6


def op_seconds(spec: DeviceSpec, op: OpSpec) -> float:
    """A non-quantized op on the float/vector unit: GDN's channel mix plus ~4 element-wise
    operations per value (square, add, sqrt, divide); other ops one operation per value."""
    work = op.macs + (4 if op.kind == "GDN" else 1) * op.elements
    compute = work / spec.vector_ops_per_cycle / (spec.clock_mhz * 1e6)
    memory = 2 * op.elements * spec.float_bytes / (spec.bandwidth_gb_s * 1e9)
    return max(compute, memory)
