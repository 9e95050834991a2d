"""Integer layers are exact: TVM's int32 accumulators equal a NumPy int32 reference bit for bit."""

import numpy as np
import pytest
import torch
import tvm
from dqsearch_tvm import build, kernels
from dqsearch_tvm.layer import layer_module, random_weight
from dqsearch_tvm.target import host_target
from tvm import relax, te

from dqsearch.backends import LayerSpec


def make_spec(op: str, cin: int, cout: int, k: int, stride: int, size: tuple[int, int]) -> LayerSpec:
    """A layer spec with the output shape torch computes (odd channels exercise the padding)."""
    pad, opad = k // 2, (stride - 1 if op == "deconv" else 0)
    mod = (torch.nn.ConvTranspose2d(cin, cout, k, stride, pad, opad) if op == "deconv"
           else torch.nn.Conv2d(cin, cout, k, stride, pad))
    shape = (1, cin, *size)
    out = tuple(mod(torch.zeros(shape)).shape)
    return LayerSpec("l", op, cin, cout, (k, k), (stride, stride), (pad, pad), (opad, opad) if op == "deconv"
                     else (0, 0), input_shape=shape, output_shape=out)


SPECS = [make_spec("conv", 3, 16, 5, 2, (12, 10)), make_spec("conv", 6, 10, 3, 1, (9, 7)),
         make_spec("deconv", 8, 3, 5, 2, (5, 6)), make_spec("deconv", 5, 12, 3, 2, (4, 4))]


@pytest.fixture(scope="module")
def target() -> tvm.target.Target:
    return tvm.target.Target(host_target(1))


def test_int8_accumulator_equals_numpy_int32(target) -> None:
    """The uint8 x int8 -> int32 NCHWc kernel on full-range random data."""
    spec = make_spec("conv", 8, 32, 3, 2, (11, 9))
    g = kernels.geometry(spec)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 8, g.in_h, g.in_w)).astype(np.uint8)
    w = rng.integers(-128, 128, (32, 8, 3, 3)).astype(np.int8)
    xp = np.ascontiguousarray(x.reshape(1, 2, 4, g.in_h, g.in_w).transpose(0, 1, 3, 4, 2))
    wp = kernels.pack_weight(w)
    a = te.placeholder(xp.shape, "uint8", name="a")
    b = te.placeholder(wp.shape, "int8", name="b")
    acc = kernels.conv_int8_acc(g, a, b)
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b, acc])}), target=target)
    out = tvm.runtime.tensor(np.zeros([int(d) for d in acc.shape], np.int32))
    lib["main"](tvm.runtime.tensor(xp), tvm.runtime.tensor(wp), out)
    got = out.numpy().transpose(0, 1, 4, 2, 3).reshape(1, 32, g.out_h, g.out_w)
    ref = kernels.reference_int32(x, w, g.stride)
    assert got.dtype == np.int32 and np.array_equal(got, ref)


@pytest.mark.parametrize("container", ["int8", "int16"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.op}{s.in_channels}-{s.out_channels}")
def test_layer_equals_numpy_reference(target, spec: LayerSpec, container: str) -> None:
    """Quantize (padding, zero insertion), integer conv and dequantize as one Relax module."""
    weight = random_weight(spec, 1)
    x = np.random.default_rng(2).standard_normal(spec.input_shape).astype(np.float32)
    absmax = float(np.abs(x).max())
    vm = relax.VirtualMachine(build.compile_module(layer_module(spec, container, weight, absmax),
                                                   target).executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    q = kernels.quantize_weights(spec, weight, container, absmax)
    ref = kernels.layer_numpy(spec, x, container, q)
    assert got.shape == tuple(spec.output_shape)
    np.testing.assert_array_equal(got, ref)
    with torch.no_grad():  # and the integer layer approximates the float one
        m = spec.module()
        m.weight.copy_(torch.from_numpy(weight))
        m.bias.zero_()
        fp = m(torch.from_numpy(x)).numpy()
    tol = {"int8": 0.05, "int16": 2e-3}[container]
    assert np.abs(got - fp).max() <= tol * np.abs(fp).max()
