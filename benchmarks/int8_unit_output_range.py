"""Experiment (issue 17 item 3): an int8 export whose last synthesis layer requantizes its output
over [0, 1] — the codec clamps the image to [0, 1] anyway — instead of its calibrated range.

    python benchmarks/int8_unit_output_range.py EXPORT_DIR COPY_DIR
    python benchmarks/deploy_quality.py --checkpoint CKPT --dataset ../shared/data/kodak \\
        --exports int8-unit=COPY_DIR -o RESULT.json

Copies an existing `dqsearch export` folder and rebuilds its default profile's g_s.onnx with the
export's own options (int8, the sub-pixel rule, exact int8 weights) and the last g_s layer's output
range set to (0, 1). A measurement, not an export option: it showed the last layer is a small part
of a per-tensor model's int8 gap (docs/deploy.md).
"""

from __future__ import annotations

import glob
import shutil
import sys

import onnx
from dqsearch_ort.deployment import subpixel_rule, transform_graph

from dqsearch.deploy.artifact import Store
from dqsearch.deploy.calibrate import output_ranges
from dqsearch.integer.params import model_layers


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    store = Store.open(dst)
    model = store.source().model
    profile = dict(zip(store.layer_names, store.manifest["default_bits"], strict=True))
    layers = model_layers(model, profile)
    ranges = output_ranges(model, profile, store.calibration())
    last = [n for n in layers if n.startswith("g_s.")][-1]
    print(f"calibrated {last} output range {ranges[last]}, now (0, 1)")
    ranges[last] = (0.0, 1.0)
    graph = transform_graph(model, "g_s", layers, "int8", ranges, subpixel_rule("g_s", layers, "int8"),
                            False, store.options.int8_weights)
    (path,) = glob.glob(f"{dst}/profiles/*/g_s.onnx")
    onnx.save(graph, path)
    print(f"rewrote {path}")


if __name__ == "__main__":
    main()
