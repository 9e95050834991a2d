"""The integer hyper-synthesis: int8 limb products (`IntegerHyperSynthesis.indexes`) against the
float64 reference (`indexes_reference`), same integers (issue 17: the integer h_s bounds the int8 decoder).

Models: embedded:3 post-training quantized to 8 bits on the deployment's calibration photos (as
`benchmarks/torch_int8_decoder.py`), and the same model with DynaQuant candidates 6/8/10 at a mixed
h_s profile (h_s.0 10 bits, h_s.2 8, h_s.4 6). Timed on one image (default kodim01, 768×512: z_hat
[1, 64, 8, 12] → indexes [1, 96, 32, 48]), old and new interleaved in every round, one thread,
thread CPU and wall time, medians (and the new path back to back, caches warm). Equality:
accumulators and indexes of both paths on every Kodak image's z_hat, exactly.

    python benchmarks/integer_hyper_speed.py -o benchmarks/results/integer_hyper_speed.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from dqsearch.atomic import write_json
from dqsearch.backends import cpu_model
from dqsearch.codec import PAD_MULTIPLE
from dqsearch.data import list_images, load_image, pad_to_multiple
from dqsearch.deploy.calibrate import calibration_images
from dqsearch.integer.int_entropy import integer_hyper
from dqsearch.models import load_checkpoint, resolve_checkpoint
from dqsearch.quant.wrap import QuantPolicy, calibrate, quantized_layers, set_profile, wrap

sys.path.insert(0, str(Path(__file__).parent))
from interleaved import timed  # noqa: E402

KODAK = Path(__file__).resolve().parents[2] / "shared/data/kodak"


def ptq_model(bits: tuple[int, ...], hs_profile: tuple[int, ...] | None, calib: list[torch.Tensor]):
    """embedded:3 calibrated (PTQ) with candidates `bits`, set to the first candidate everywhere
    except h_s (`hs_profile`, in layer order); returns (model, profile)."""
    policy = QuantPolicy(bits=bits) if len(bits) == 1 else QuantPolicy.dynamic(bits)
    model = wrap(load_checkpoint(resolve_checkpoint("embedded:3")).model, policy).eval()
    calibrate(model, calib)
    profile = {n: m.candidates[0] for n, m in quantized_layers(model).items()}
    if hs_profile:
        hs = [n for n in profile if n.startswith("h_s.")]
        profile |= dict(zip(hs, hs_profile, strict=True))
    set_profile(model, profile)
    return model, profile


def z_hat(model, path: Path) -> np.ndarray:
    x = pad_to_multiple(load_image(path, warn=False).unsqueeze(0), PAD_MULTIPLE)[0]
    with torch.no_grad():
        return torch.round(model.h_a(model.g_a(x).abs())).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kodak", default=str(KODAK), help="the Kodak folder (equality on every image)")
    ap.add_argument("--image", default="kodim01.png", help="the timed image, in --kodak")
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("-o", "--output", default="benchmarks/results/integer_hyper_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    calib = calibration_images()
    images = list_images(args.kodak)
    load_before = os.getloadavg()
    out = {}
    for name, bits, hs in (("embedded:3 PTQ 8 bits", (8,), None),
                           ("embedded:3 PTQ 6/8/10, h_s 10/8/6", (8, 6, 10), (10, 8, 6))):
        model, profile = ptq_model(bits, hs, calib)
        hyper = integer_hyper(model, profile)
        if hyper.fast_path() is None:
            raise SystemExit(f"{name}: the int8 limb path is off here (torch._int_mm missing or a bound)")
        zs = {p.name: z_hat(model, p) for p in images}
        same = [p for p, z in zs.items()
                if np.array_equal(hyper.indexes(z), hyper.indexes_reference(z))
                and np.array_equal(hyper.accumulator(z), hyper.accumulator_reference(z))]
        z = zs[args.image]
        ms = timed({"float64 reference": lambda z=z, h=hyper: h.indexes_reference(z),
                    "int8 limbs": lambda z=z, h=hyper: h.indexes(z)}, args.rounds)
        # back to back as well: interleaved, the reference's ~10 MB of temporaries evict the fast
        # path's caches (~0.4 ms of its time); a decoder's other stages do something in between
        ms |= {"int8 limbs, back to back": timed({"": lambda z=z, h=hyper: h.indexes(z)}, args.rounds)[""]}
        ratio = {k: ms["float64 reference"][k] / ms["int8 limbs"][k] for k in ("cpu_ms", "wall_ms")}
        out[name] = {
            "h_s_bits": [profile[n] for n in profile if n.startswith("h_s.")],
            "weight_digits": [c.limbs for c in hyper.fast_path().convs],
            "int32_digit_pairs": [c.paired for c in hyper.fast_path().convs],
            "input_digits": [c.in_limbs for c in hyper.fast_path().convs],
            "z_hat_shape": list(z.shape), "timings": ms, "speedup": ratio,
            "kodak_identical": f"{len(same)}/{len(zs)}"}
        print(f"{name}: reference {ms['float64 reference']['cpu_ms']:.2f} ms, int8 limbs "
              f"{ms['int8 limbs']['cpu_ms']:.2f} ms cpu ({ratio['cpu_ms']:.2f}x; wall "
              f"{ms['int8 limbs']['wall_ms']:.2f} ms, {ratio['wall_ms']:.2f}x; back to back "
              f"{ms['int8 limbs, back to back']['cpu_ms']:.2f} ms); identical on "
              f"{len(same)}/{len(zs)} Kodak images")
        if len(same) != len(zs):
            raise SystemExit(f"{name}: the paths differ on {sorted(set(zs) - set(same))}")
    write_json(args.output, {
        "benchmark": "integer_hyper_speed", "cpu": cpu_model(), "threads": 1, "rounds": args.rounds,
        "timer": "thread CPU time and wall time, median over interleaved rounds",
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "image": args.image, "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "models": out})
    print(f"wrote {args.output} (load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
