"""Deployment: a trained (fake-)quantized model exported to real integer execution on a backend.

`artifact.export_model` writes an export folder (ONNX transforms with the learned quantization as
explicit QDQ, entropy tables, packed weights, a manifest; one sub-folder per precision profile);
`runtime.Runtime` runs the codec through it; `int_hyper` computes the entropy parameters with
integers only; `torch_codec` is the PyTorch codec with that integer hyper-synthesis. Modules that
need onnx / onnxruntime import them themselves, so importing this package needs neither.
"""
