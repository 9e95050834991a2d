"""How far past its string CompressAI's rANS decoder reads (issue 18): the margin `streamcheck`
pads with must cover it. For strings that are too short for their symbol count (random words,
all-ones, zeros, real strings cut short), find by bisection the smallest zero padding P after
which random garbage no longer changes the decoded image; report P per symbol.

    python benchmarks/rans_read_extent.py -o benchmarks/results/rans_read_extent.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

from dqsearch.codec import encode, unpack
from dqsearch.data import list_images, load_image, sample_images_dir
from dqsearch.models import load_checkpoint, resolve_checkpoint
from dqsearch.streamcheck import MARGIN_CONSTANT, MARGIN_PER_SYMBOL, expected_layout, margin

KINDS = ("random words", "all ones", "zeros", "nibbles", "real, cut short")


def _string(kind: str, real: bytes, rnd: random.Random) -> bytes:
    words = rnd.randint(2, 16)
    if kind == "random words":
        return rnd.randbytes(4 * words)
    if kind == "all ones":
        return b"\xff" * (4 * words)
    if kind == "zeros":
        return bytes(4 * words)
    if kind == "nibbles":
        return bytes(rnd.choice((0xFF, 0xF0, 0x0F, 0x7F)) for _ in range(4 * words))
    return real[: 4 * max(2, rnd.randrange(len(real) // 4 + 1))]


def _extent(model, shape, strings: list[bytes], symbols: tuple[int, ...]) -> list[int]:
    """Per string: the smallest zero padding (bytes) past which garbage is not read."""
    def decode(ss: list[bytes]) -> bytes:  # bytes, not tensors: garbage strings can decode to NaN
        with torch.no_grad():
            return model.decompress([[s] for s in ss], shape)["x_hat"].numpy().tobytes()

    big = [s + bytes(8 * n + 65536) for s, n in zip(strings, symbols, strict=True)]
    ref = decode(big)
    out = []
    for j, (s, n) in enumerate(zip(strings, symbols, strict=True)):
        lo, hi = 0, 8 * n + 65536
        while lo < hi:
            mid = (lo + hi) // 2
            trial = list(big)
            trial[j] = s + bytes(mid) + os.urandom(8 * n + 4096)
            if decode(trial) == ref:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="embedded:3")
    ap.add_argument("--counts", default="64:40,256:20,512:10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", default="benchmarks/results/rans_read_extent.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ck = load_checkpoint(resolve_checkpoint(args.checkpoint))
    model = ck.model.eval()
    rnd = random.Random(args.seed)
    photo = load_image(list_images(sample_images_dir())[0])
    t0 = time.perf_counter()
    out: dict = {"benchmark": "rans_read_extent", "checkpoint": args.checkpoint,
                 "margin": f"{MARGIN_PER_SYMBOL} bytes per symbol + {MARGIN_CONSTANT}", "sizes": {}}
    for item in args.counts.split(","):
        size, count = (int(v) for v in item.split(":"))
        layout = expected_layout(model, size, size)
        x = photo.repeat(1, 2 + size // photo.shape[1], 2 + size // photo.shape[2])[:, :size, :size]
        real = unpack(encode(model, ck.model_id, x.unsqueeze(0).contiguous()).data)[1]
        per_kind: dict[str, float] = {}
        used: dict[str, float] = {}
        worst_bytes = 0
        for i in range(count):
            kind = KINDS[i % len(KINDS)]
            strings = [_string(kind, real[j][0], rnd) for j in range(len(layout.symbols))]
            read = _extent(model, layout.shape, strings, layout.symbols)
            worst_bytes = max(worst_bytes, *read)
            per_kind[kind] = round(max(per_kind.get(kind, 0.0), *(r / n for r, n in zip(
                read, layout.symbols, strict=True))), 3)
            used[kind] = round(max(used.get(kind, 0.0), *(r / margin(n) for r, n in zip(
                read, layout.symbols, strict=True))), 4)
        out["sizes"][f"{size}x{size}"] = {"streams": count, "symbols": layout.symbols,
                                          "worst_bytes_read_past_string": worst_bytes,
                                          "worst_bytes_per_symbol": per_kind,
                                          "worst_fraction_of_margin": used}
        print(size, worst_bytes, json.dumps(per_kind), json.dumps(used), flush=True)
    sizes = out["sizes"].values()
    out["worst_bytes_per_symbol"] = max(max(v["worst_bytes_per_symbol"].values()) for v in sizes)
    out["worst_fraction_of_margin"] = max(max(v["worst_fraction_of_margin"].values()) for v in sizes)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "sizes"}))


if __name__ == "__main__":
    main()
