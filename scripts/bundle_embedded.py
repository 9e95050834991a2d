"""Bundle trained FP32 checkpoints as the embedded model family (fp16, no training state) and write
dqsearch/embedded/manifest.json with each model's λ, id, training command and time.

    python scripts/bundle_embedded.py runs/embedded/q{1,2,3,4}.pt
"""

from __future__ import annotations

import argparse
import json

from dqsearch.models import embedded_dir, load_checkpoint, save_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="FP32 checkpoints, lowest λ first")
    args = ap.parse_args()
    entries = []
    lineage: dict[str, dict] = {}
    for quality, path in enumerate(args.checkpoints, start=1):
        ck = load_checkpoint(path)
        if ck.policy is not None or not ck.meta.get("finished"):
            raise SystemExit(f"{path}: bundle only finished FP32 checkpoints")
        lineage[ck.model_id] = ck.meta
        name = f"{ck.architecture}-N{ck.arch_args['N']}-M{ck.arch_args['M']}-q{quality}.pt"
        meta = {k: ck.meta.get(k) for k in ("lmbda", "metric", "steps", "train_seconds", "command",
                                            "init_from")}
        mid = save_checkpoint(embedded_dir() / name, ck.model, ck.architecture, ck.arch_args, None,
                              {**meta, "finished": True, "quality": quality}, half=True)
        entries.append({"quality": quality, "file": name, "model_id": mid, **meta})
    manifest = {
        "description": "ScaleHyperprior (N=64, M=96) trained by dqsearch on ../shared/data/train "
                       "(49 photos), MSE, stored in fp16. Quality 3 was trained from scratch; the "
                       "others were fine-tuned from a neighbour (see init_from and command).",
        "models": entries,
    }
    (embedded_dir() / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for e in entries:
        print(f"q{e['quality']}: λ={e['lmbda']} {e['file']} id {e['model_id']} "
              f"({e['steps']} steps, {e['train_seconds'] / 60:.0f} min)")


if __name__ == "__main__":
    main()
