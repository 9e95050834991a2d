"""Bitstream fuzz campaign (issue 8): N mutated/truncated files through `decode`; counts outcomes,
the slowest decode and peak memory, and writes JSON. Half the files are re-sealed with a valid CRC
so the parser and the entropy decoder see the damage, not just the checksum.

    python benchmarks/fuzz_bitstreams.py -n 10000 -o benchmarks/results/fuzz_bitstreams.json
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from collections import Counter
from pathlib import Path

import torch

from dqsearch.codec import BitstreamError, decode, encode
from dqsearch.data import list_images, load_image, sample_images_dir
from dqsearch.fuzzing import mutate
from dqsearch.models import load_checkpoint, resolve_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--checkpoint", default="embedded:3")
    ap.add_argument("--size", type=int, default=64, help="side of the encoded image crop")
    ap.add_argument("-o", "--output", default="benchmarks/results/fuzz_bitstreams.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ck = load_checkpoint(resolve_checkpoint(args.checkpoint))
    img = load_image(list_images(sample_images_dir())[0])[:, : args.size, : args.size].unsqueeze(0)
    data = encode(ck.model, ck.model_id, img).data
    rnd = random.Random(0)
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    slowest = 0.0
    t_start = time.perf_counter()
    for i in range(args.n):
        blob = mutate(data, rnd, reseal=bool(i % 2))
        t0 = time.perf_counter()
        try:
            decode(ck.model, ck.model_id, blob)
            outcomes["decoded to an image"] += 1
        except BitstreamError as e:
            outcomes["clear error"] += 1
            reasons[str(e).split(" (")[0].split(":")[0][:60]] += 1
        slowest = max(slowest, time.perf_counter() - t0)
    result = {
        "benchmark": "fuzz_bitstreams", "files": args.n, "checkpoint": args.checkpoint,
        "image": f"{args.size}x{args.size}", "bytes": len(data), "outcomes": dict(outcomes),
        "top_errors": dict(reasons.most_common(8)), "slowest_decode_s": round(slowest, 4),
        "total_s": round(time.perf_counter() - t_start, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
