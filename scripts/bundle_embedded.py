"""Bundle trained FP32 checkpoints as the embedded model family (fp16, no training state) and write
dqsearch/embedded/manifest.json with each model's λ, id, training command and time.

    python scripts/bundle_embedded.py 1=runs/embedded/q1.pt 2=runs/embedded/q2.pt ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dqsearch.models import embedded_dir, load_checkpoint, save_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="QUALITY=PATH of finished FP32 checkpoints")
    ap.add_argument("--history", help="JSON file: quality → list of the commands that trained it")
    args = ap.parse_args()
    history = json.loads(Path(args.history).read_text()) if args.history else {}
    entries = []
    for item in args.checkpoints:
        quality_text, _, path = item.partition("=")
        quality = int(quality_text)
        ck = load_checkpoint(path)
        if ck.policy is not None or not ck.meta.get("finished"):
            raise SystemExit(f"{path}: bundle only finished FP32 checkpoints")
        name = f"{ck.architecture}-N{ck.arch_args['N']}-M{ck.arch_args['M']}-q{quality}.pt"
        meta = {k: ck.meta.get(k) for k in ("lmbda", "metric", "steps", "train_seconds", "command",
                                            "init_from")}
        mid = save_checkpoint(embedded_dir() / name, ck.model, ck.architecture, ck.arch_args, None,
                              {**meta, "finished": True, "quality": quality}, half=True)
        entries.append({"quality": quality, "file": name, "model_id": mid, **meta,
                        "commands": history.get(str(quality), [meta["command"]])})
    entries.sort(key=lambda e: e["quality"])
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
