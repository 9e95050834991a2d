"""Deployment: a trained (fake-)quantized model exported to real integer execution on a backend.

The backend-neutral half lives here: `artifact.export_model` writes an export folder (manifest,
entropy tables, packed weights, the integer h_s; one sub-folder per precision profile) and asks
the deployment part of the chosen backend (`Backend.deployment()`, found by `targets`) to build
each profile's transforms; `runtime.Runtime` runs the codec through them; `params` holds the
learned integer parameters, `modules` the float twins (with the sub-pixel rewrite) a backend
compiles, `int_hyper` computes the entropy parameters with integers only, and `torch_codec` is
the PyTorch codec with that integer hyper-synthesis. No module here imports a plugin.
"""
