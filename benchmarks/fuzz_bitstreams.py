"""Bitstream fuzz campaigns (issues 8 and 18); writes JSON.

`--mode mutate`: N mutated/truncated files through `decode` (half re-sealed with a valid CRC so the
parser and the entropy decoder see the damage, not just the checksum).
`--mode structure`: streams that pass every container check (valid CRC, a header for 64 to 2048 px)
but carry hostile entropy-coded strings or latent shapes (empty, short, random, all-ones, long,
a smaller image's strings, shape and batch bombs) and real streams of that size with mutations.
Each is decoded in a forked child (signals, hangs and unexpected exceptions are counted, not
fatal), twice when it decodes, to check that the same bytes always give the same pixels.

    python benchmarks/fuzz_bitstreams.py --mode mutate -n 10000 -o benchmarks/results/fuzz_bitstreams.json
    python benchmarks/fuzz_bitstreams.py --mode structure -o benchmarks/results/fuzz_structure.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import time
from collections import Counter
from pathlib import Path

import torch

from dqsearch.codec import PAD_MULTIPLE, BitstreamError, decode, encode, unpack
from dqsearch.data import list_images, load_image, sample_images_dir
from dqsearch.fuzzing import STRING_KINDS, crafted, flip_bits, mutate, run_forked
from dqsearch.models import load_checkpoint, resolve_checkpoint
from dqsearch.streamcheck import expected_layout

# streams per size in the structure campaign (2048 px decodes take ~1 s each, twice)
DEFAULT_COUNTS = "64:700,128:400,256:300,512:140,1024:50,2048:24"


def _image(size: int) -> torch.Tensor:
    """A size×size photo (the first sample image, mirrored-tiled when it is smaller)."""
    x = load_image(list_images(sample_images_dir())[0])
    while x.shape[1] < size or x.shape[2] < size:
        x = torch.cat([x, x.flip(1)], 1) if x.shape[1] < size else torch.cat([x, x.flip(2)], 2)
    return x[:, :size, :size].unsqueeze(0).contiguous()


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "threads": torch.get_num_threads()}


def mutate_campaign(args, ck) -> dict:
    data = encode(ck.model, ck.model_id, _image(args.size)).data
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
    return {
        "benchmark": "fuzz_bitstreams", "mode": "mutate", "files": args.n, "checkpoint": args.checkpoint,
        "image": f"{args.size}x{args.size}", "bytes": len(data), "outcomes": dict(outcomes),
        "top_errors": dict(reasons.most_common(8)), "slowest_decode_s": round(slowest, 4),
        "total_s": round(time.perf_counter() - t_start, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def structure_campaign(args, ck) -> dict:
    def dec(blob: bytes):
        return decode(ck.model, ck.model_id, blob)[0]

    template = encode(ck.model, ck.model_id, _image(64)).data
    rnd = random.Random(args.seed)
    t_start = time.perf_counter()
    sizes = {}
    for item in args.counts.split(","):
        size, count = (int(v) for v in item.split(":"))
        pad = -(-size // PAD_MULTIPLE) * PAD_MULTIPLE
        shape = expected_layout(ck.model, pad, pad).shape
        real = encode(ck.model, ck.model_id, _image(size)).data
        header_bytes = 8 + 6 + len(unpack(real)[0].profile_bits)  # flips land in the payload
        outcomes: Counter[str] = Counter()
        by_kind: dict[str, Counter[str]] = {}
        reasons: Counter[str] = Counter()
        nondeterministic, slowest, rss, examples = 0, 0.0, 0.0, []
        for i in range(count):
            kind = ("mutated real" if i % 8 == 7 else STRING_KINDS[i % len(STRING_KINDS)])
            blob = (flip_bits(real, rnd, header_bytes) if kind == "mutated real"
                    else crafted(template, size, size, shape, rnd, kind))
            first = run_forked(dec, blob, args.timeout, (BitstreamError,))
            runs = [first]
            if first.kind == "image":  # again, with different garbage in the free heap
                runs.append(run_forked(dec, blob, args.timeout, (BitstreamError,), dirty=i))
                if runs[1].digest != first.digest:
                    nondeterministic += 1
            for o in runs:
                slowest, rss = max(slowest, o.seconds), max(rss, o.rss_mib)
            outcomes[first.kind] += 1
            by_kind.setdefault(kind, Counter())[first.kind] += 1
            if first.kind == "error":
                reasons[first.detail.split(" (")[0].split(";")[0][:70]] += 1
            elif first.kind in ("signal", "hang", "traceback") and len(examples) < 5:
                examples.append({"kind": kind, "outcome": first.kind, "detail": first.detail})
        sizes[f"{size}x{size}"] = {
            "streams": count, "outcomes": dict(outcomes),
            "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "nondeterministic": nondeterministic, "top_errors": dict(reasons.most_common(6)),
            "slowest_decode_s": round(slowest, 3), "peak_child_rss_mib": round(rss, 1),
            "examples": examples,
        }
        print(size, json.dumps(sizes[f"{size}x{size}"]["outcomes"]), "nondeterministic", nondeterministic,
              flush=True)
    totals: Counter[str] = Counter()
    for v in sizes.values():
        totals.update(v["outcomes"])
    return {
        "benchmark": "fuzz_bitstreams", "mode": "structure", "checkpoint": args.checkpoint,
        "seed": args.seed, "timeout_s": args.timeout, "guarded": not args.unguarded, "totals": dict(totals),
        "nondeterministic": sum(v["nondeterministic"] for v in sizes.values()), "sizes": sizes,
        "total_s": round(time.perf_counter() - t_start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["mutate", "structure"], default="mutate")
    ap.add_argument("-n", type=int, default=10_000, help="files (mutate mode)")
    ap.add_argument("--checkpoint", default="embedded:3")
    ap.add_argument("--size", type=int, default=64, help="side of the encoded image (mutate mode)")
    ap.add_argument("--counts", default=DEFAULT_COUNTS, help="SIZE:STREAMS,... (structure mode)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a decode is a hang")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unguarded", action="store_true",
                    help="no string length check or zero padding (what CompressAI alone does)")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.unguarded:
        import dqsearch.streamcheck as sc

        sc.MIN_STRING = sc.MARGIN_PER_SYMBOL = sc.MARGIN_CONSTANT = 0
    ck = load_checkpoint(resolve_checkpoint(args.checkpoint))
    machine = _machine()
    result = mutate_campaign(args, ck) if args.mode == "mutate" else structure_campaign(args, ck)
    result["machine"] = machine
    name = "bitstreams" if args.mode == "mutate" else "structure"
    output = args.output or f"benchmarks/results/fuzz_{name}.json"
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sizes"}, indent=2))


if __name__ == "__main__":
    main()
