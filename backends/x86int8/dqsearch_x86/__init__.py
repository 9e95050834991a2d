"""dqsearch-x86: PyTorch's x86 int8 engine as a deployment target and a latency backend (`x86-int8`).

`dqsearch export --backend x86-int8 -o DIR` writes each transform of a quantized checkpoint as
plain arrays (learned int8 weights, scales, zero-points, GDN parameters and calibrated int8 GDN
ranges); `dqsearch compress/decompress --runtime DIR` runs g_a, h_a and g_s as oneDNN int8 convolutions
(the x86 engine's kernels) on plain uint8 tensors, with int8 GDN/IGDN between them (element-wise
parts fused by torch.compile), layers above 8 bits and h_s in the exact (fake-quantized)
arithmetic, FP32 layers in float. The backend times the very
modules the deployment builds.
"""

from .backend import X86Backend, x86_int8
from .deployment import X86Deployment

__all__ = ["X86Backend", "X86Deployment", "x86_int8"]
