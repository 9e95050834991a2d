"""Is the int8 convolution kernel what bounds the deployed decoder? (issue 17)

Times g_s's convolutions in the sub-pixel form the int8 export runs (768×512 output, embedded
ScaleHyperprior N=64, M=96: each stride-2 5×5 deconvolution becomes a 3×3 conv with 4× the output
channels) through every CPU engine at hand, one thread, thread CPU time, engines interleaved per
round: ONNX Runtime Conv (FP32) and QLinearConv (uint8 × int8 per-channel), PyTorch FP32 in NCHW
and channels-last, and PyTorch's quantized engines (x86, fbgemm, onednn) on channels-last quint8.
Random weights and inputs: the kernels' speed does not depend on the values.

    python benchmarks/int8_conv_engines.py -o benchmarks/results/int8_conv_engines.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

# (layer, in channels, out channels of the sub-pixel conv, input height, width) at 768×512
LAYERS = [("g_s.0", 96, 256, 32, 48), ("g_s.2", 64, 256, 64, 96), ("g_s.4", 64, 256, 128, 192),
          ("g_s.6", 64, 12, 256, 384)]


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    name = fields.get("model name\t", "").strip() or platform.processor() or platform.machine()
    family = fields.get("cpu family\t", "").strip()
    return f"{name} (cpu family {family})" if family else name


def ort_session(node: helper.NodeProto, x_type: int, y_type: int, shape_in: list[int], shape_out: list[int],
                inits: list) -> ort.InferenceSession:
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", x_type, shape_in)],
                              [helper.make_tensor_value_info("y", y_type, shape_out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def engines(cin: int, cout: int, h: int, w: int, rng: np.random.Generator) -> dict:
    """name → zero-argument callable running the layer once."""
    shape_in, shape_out = [1, cin, h, w], [1, cout, h, w]
    x8 = rng.integers(0, 255, shape_in, dtype=np.uint8)
    xf = rng.standard_normal(shape_in).astype(np.float32)
    wf = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.05
    w8 = rng.integers(-127, 128, (cout, cin, 3, 3), dtype=np.int8)
    run = {}
    conv = ort_session(helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
                       TensorProto.FLOAT, TensorProto.FLOAT, shape_in, shape_out,
                       [numpy_helper.from_array(wf, "w"),
                        numpy_helper.from_array(np.zeros(cout, np.float32), "b")])
    run["ort Conv fp32"] = lambda: conv.run(None, {"x": xf})
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"), numpy_helper.from_array(w8, "w"),
             numpy_helper.from_array(np.full(cout, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
             numpy_helper.from_array(np.array(128, np.uint8), "yz"),
             numpy_helper.from_array(np.zeros(cout, np.int32), "b")]
    qnode = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                             pads=[1, 1, 1, 1])
    qconv = ort_session(qnode, TensorProto.UINT8, TensorProto.UINT8, shape_in, shape_out, inits)
    run["ort QLinearConv int8"] = lambda: qconv.run(None, {"x": x8})
    tconv = torch.nn.Conv2d(cin, cout, 3, padding=1).eval()
    tx = torch.from_numpy(xf)
    tx_last = tx.contiguous(memory_format=torch.channels_last)
    tconv_last = torch.nn.Conv2d(cin, cout, 3, padding=1).eval().to(memory_format=torch.channels_last)
    run["torch fp32 NCHW"] = lambda: tconv(tx)
    run["torch fp32 channels-last"] = lambda: tconv_last(tx_last)
    from torch.ao.nn.quantized import Conv2d as QConv2d
    for engine in ("x86", "fbgemm", "onednn"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = engine
        q = QConv2d(cin, cout, 3, padding=1)
        qw = torch.quantize_per_channel(torch.from_numpy(wf), torch.full((cout,), 0.01, dtype=torch.double),
                                        torch.zeros(cout, dtype=torch.long), 0, torch.qint8)
        q.set_weight_bias(qw, torch.zeros(cout))
        q.scale, q.zero_point = 0.05, 128
        qx = torch.quantize_per_tensor(tx, 0.05, 128, torch.quint8)
        qx = qx.contiguous(memory_format=torch.channels_last)

        def qrun(q=q, qx=qx, engine=engine):
            torch.backends.quantized.engine = engine
            return q(qx)
        run[f"torch int8 {engine}"] = qrun
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("-o", "--output", default="benchmarks/results/int8_conv_engines.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = {}
    with torch.no_grad():
        for name, cin, cout, h, w in LAYERS:
            run = engines(cin, cout, h, w, rng)
            for f in run.values():  # warm-up (prepacking, first-call allocations)
                f(), f()
            times: dict[str, list[float]] = {k: [] for k in run}
            for _ in range(args.rounds):
                for k, f in run.items():
                    t = time.thread_time()
                    f()
                    times[k].append(1000 * (time.thread_time() - t))
            macs = cin * cout * 9 * h * w
            rows[name] = {"shape": {"in": cin, "out": cout, "h": h, "w": w, "kernel": 3}, "gmac": macs / 1e9,
                          "ms": {k: statistics.median(v) for k, v in times.items()}}
            print(name, " ".join(f"{k}: {v:.2f}" for k, v in rows[name]["ms"].items()), flush=True)
    total = {k: sum(r["ms"][k] for r in rows.values()) for k in next(iter(rows.values()))["ms"]}
    result = {"benchmark": "int8_conv_engines", "cpu": cpu_name(), "threads": 1, "rounds": args.rounds,
              "timer": "thread CPU time, median over interleaved rounds", "load_average": os.getloadavg(),
              "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
              "layers": rows, "g_s_total_ms": total}
    print("g_s total", " ".join(f"{k}: {v:.2f}" for k, v in total.items()))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
