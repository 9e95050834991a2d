"""The integer model, backend-neutral: what a trained fake-quantized model is in integers.

`params` reads each layer's learned integers and scales (`LayerQuant`), `packing` writes the
weights at their bit-widths, `subpixel` plans a transposed convolution as a convolution plus a
pixel shuffle, `int_hyper` computes the entropy parameters (h_s) with integers only (its exact
sums on int8 kernels: `limbs` splits wide integers into int8 digits, `limb_conv` / `limb_hyper` run
the layers on them, `threshold_lookup` replaces the scale-table search, `workspace` keeps their
tensors) and `int_entropy` builds it for a model. Both codecs use it — `dqsearch.codec` (PyTorch) and the
deployed runtime (`dqsearch.deploy`) — so neither depends on the other for it.
"""
