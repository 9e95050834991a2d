"""Static vs dynamic precision at equal average bits, for the DQ models of a study.

For each DQ checkpoint (one per λ of a `dqsearch compare` study, read from its cache), on Kodak:

- **dynamic**: the selectors choose each image's profile (what the decoder runs);
- **forced**: the same model with every image forced to its most frequent profile (the static
  model the selector would be if it never looked at the image);
- **shuffled**: the chosen profiles permuted between images (exactly the dynamic model's average
  bits, not matched to content; `benchmarks/dq_adaptivity.py`);
- with `--static-qat`: a static mixed-precision model QAT-trained as long (same [train] settings,
  seed, photos) with that most frequent profile fixed in every layer (DPA, no selector), from the
  same FP32 checkpoint.

PSNR and bpp are the entropy model's estimate of the same forward pass (within 1% of file bytes),
J = bpp + λ·255²·MSE. One seed per model; the seed-to-seed spread of a 300-step QAT run is
0.016–0.039 dB on Kodak (README, "Which method wins where").

    python benchmarks/dq_static_vs_dynamic.py --study studies/table4.toml --method "DQ {6,8,10}" \\
        --static-qat --threads 1 -o benchmarks/results/dq_static_vs_dynamic.json
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from dqsearch.compare import Benchmark, _family_checkpoint, method_checkpoint
from dqsearch.data import CropSampler, list_images, load_image
from dqsearch.models import load_checkpoint
from dqsearch.quant.wrap import QuantPolicy, wrap
from dqsearch.train import RunSpec, TrainConfig, train

try:
    from dq_adaptivity import run_image, summarise
except ImportError:  # run as a module from the repository root
    from benchmarks.dq_adaptivity import run_image, summarise


def static_policy(dq: QuantPolicy, profile: dict[str, int]) -> QuantPolicy:
    """A fixed-precision DPA policy with every layer at its bits in `profile` (same quantizer)."""
    d = dq.to_dict()
    d.update(mode="fixed", bits=[max(profile.values())], selector="per-layer", pin_first=None,
             pin_last=None, overrides={n: {"mode": "fixed", "bits": [b]} for n, b in profile.items()})
    return QuantPolicy.from_dict(d)


def static_checkpoint(study: Benchmark, dq_ck, profile: dict[str, int], base: Path, out: Path) -> Path:
    """QAT of the static profile with the DQ run's own training configuration (resumable)."""
    if out.exists():
        ck = load_checkpoint(out, with_train_state=True)
        if ck.meta.get("finished"):
            return out
        model, state = ck.model, ck.train_state
        run = RunSpec(ck.architecture, ck.arch_args, ck.policy, ck.meta)
        config = TrainConfig.from_dict(state["config"])
    else:
        fp = load_checkpoint(base)
        policy = static_policy(dq_ck.policy, profile)
        model, state = wrap(fp.model, policy), None
        run = RunSpec(fp.architecture, fp.arch_args, policy,
                      {"init_from": str(base), "init_model_id": fp.model_id, "study": study.name,
                       "method": "static most-frequent profile", "profile": profile,
                       "lmbda": fp.meta.get("lmbda", 0.013)})
        dq_state = load_checkpoint(dq_ck.path, with_train_state=True).train_state
        config = TrainConfig.from_dict({**dq_state["config"], "gamma": 0.0})
    out.parent.mkdir(parents=True, exist_ok=True)
    train(model, run, CropSampler(list_images(study.train_data), config.crop), config, out,
          train_state=state, progress=False)
    return out


def shuffled(model, images, lmbda, adaptive, seed: int, runs: int) -> dict | None:
    profiles = [r["profile"] for r in adaptive]
    if len({json.dumps(p, sort_keys=True) for p in profiles}) < 2:
        return None
    rng = random.Random(seed)
    out = []
    for _ in range(runs):
        perm = list(profiles)
        while perm == profiles:
            rng.shuffle(perm)
        out.append(summarise([run_image(model, x, lmbda, p) for x, p in zip(images, perm, strict=True)]))
    return {k: statistics.fmean(s[k] for s in out) for k in out[0]} | {"runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/table4.toml")
    ap.add_argument("--method", default="DQ {6,8,10}")
    ap.add_argument("--members", nargs="+", help="family members (default: all of the study's)")
    ap.add_argument("--static-qat", action="store_true",
                    help="also QAT-train the most frequent profile as a static model")
    ap.add_argument("--shuffles", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", default="benchmarks/results/dq_static_vs_dynamic.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    study = Benchmark.load(args.study)
    method = next((m for m in study.methods if m.name == args.method), None)
    if method is None or method.policy is None or method.policy.mode != "dynamic":
        raise SystemExit(f"{args.study} has no DQ method {args.method!r}")
    files = list_images(study.dataset)
    images = [load_image(f, warn=False).unsqueeze(0) for f in files]
    out = Path(args.output)
    result = json.loads(out.read_text()) if out.exists() else {"rows": []}
    result.update({"benchmark": "dq_static_vs_dynamic", "study": args.study, "method": args.method,
                   "dataset": study.dataset.name, "images": len(files),
                   "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
                   "note": "entropy-model bpp of the same forward pass; J = bpp + λ·255²·MSE; "
                           "one seed (0) per model"})
    for spec in args.members or study.family:
        t0 = time.perf_counter()
        base = _family_checkpoint(study, spec)
        ck = load_checkpoint(method_checkpoint(study, method, base, progress=False))
        model = ck.model.eval()
        lmbda = float(ck.meta.get("lmbda") or 0.013)
        adaptive = [run_image(model, x, lmbda, None) for x in images]
        counts = collections.Counter(json.dumps(r["profile"], sort_keys=True) for r in adaptive)
        mode = json.loads(counts.most_common(1)[0][0])
        row = {"member": spec, "lmbda": lmbda, "model_id": ck.model_id,
               "distinct_profiles": len(counts), "mode_share": counts.most_common(1)[0][1] / len(files),
               "mode_profile": mode, "dynamic": summarise(adaptive),
               "forced_mode": summarise([run_image(model, x, lmbda, mode) for x in images]),
               "shuffled": shuffled(model, images, lmbda, adaptive, args.seed, args.shuffles)}
        if args.static_qat:
            path = study.cache / "checkpoints" / "static-mode-profile" / method.slug / f"{base.stem}.pt"
            st = load_checkpoint(static_checkpoint(study, ck, mode, base, path)).model.eval()
            row["static_qat"] = {**summarise([run_image(st, x, lmbda, None) for x in images]),
                                 "checkpoint": str(path)}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        result["rows"] = [r for r in result["rows"] if r["member"] != spec] + [row]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        line = f"{spec}: {row['distinct_profiles']} profiles; " + "; ".join(
            f"{k} {v['avg_bits']:.2f} bits {v['psnr']:.3f} dB {v['bpp']:.4f} bpp J {v['rd_cost']:.4f}"
            for k in ("dynamic", "forced_mode", "shuffled", "static_qat") if (v := row.get(k)))
        print(line, flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
