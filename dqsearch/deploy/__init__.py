"""Deployment: a trained (fake-)quantized model exported to real integer execution on a backend.

`export_model` writes artifacts (ONNX transforms with the learned quantization as explicit QDQ,
entropy tables, packed weights, a manifest); `Runtime` runs the codec through them.
"""
