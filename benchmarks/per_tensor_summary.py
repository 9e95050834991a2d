"""Issue 17 item 3: per-channel vs per-tensor activation quantizers (and learned g_s output
quantizers) for the int8 ONNX export — one JSON from the runs' own result files.

    python benchmarks/per_tensor_summary.py --runs /work/wt17-runs -o benchmarks/results/per_tensor_int8.json

Reads, for each configuration TAG (channel, tensor, tensor-out-g_s) and quality Q / seed S:
`qQ-dpa8-TAG-sS.pt` (checkpoints, `dqsearch train`), `eval-dpa8-TAG-s0.json` (`dqsearch eval`,
the fake-quantized PyTorch codec on Kodak, CompressAI format), `eval-q3-dpa8-TAG-s1.json`,
`deploy_quality_qQ-dpa8-TAG-sS.json` (`benchmarks/deploy_quality.py`: the deployed int8 decoder on
PyTorch's streams) and `deploy_speed_per_tensor.json` (`benchmarks/deploy_speed.py`). Writes the
deployed int8 decoder's RD curves in CompressAI format beside the output (for `dqsearch bd-rate`)
and BD-rates (pchip) against the per-channel model, fake-quantized and deployed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from dqsearch.atomic import write_json
from dqsearch.backends import cpu_model
from dqsearch.evaluate import bd_overlap, bd_rate

TAGS = ("channel", "tensor", "tensor-out-g_s")
LAMBDAS = {1: 0.0035, 2: 0.0067, 3: 0.013, 4: 0.025}
PY = 'dqsearch'
TRAIN = ("{py} train --checkpoint embedded:{q} --lambda {lmbda} --bits 8 --activation-granularity {gran}"
         "{outq} --steps 300 --batch-size 8 --crop 128 --lr 1e-5 --compile --threads 1 --seed {seed} "
         "-o RUNS/q{q}-dpa8-{tag}-s{seed}.pt")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _curve(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    pts = sorted(points)
    return [p[0] for p in pts], [p[1] for p in pts]


def _bd(anchor, test) -> dict:
    rate, dpsnr = bd_rate(anchor, test, "pchip")
    return {"bd_rate_percent": rate, "bd_psnr_db": dpsnr, "overlap": bd_overlap(anchor, test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="folder of the runs' checkpoints and result files")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.output)

    commands = {"train": {}, "eval": {}, "export": (
        "dqsearch export --checkpoint RUNS/qQ-dpa8-TAG-sS.pt --threads 1 "
        "-o RUNS/exports/qQ-dpa8-TAG-sS-int8  (and --arithmetic exact -o ...-exact for q3 seed 0)"),
        "deploy_quality": ("python benchmarks/deploy_quality.py --checkpoint RUNS/qQ-dpa8-TAG-sS.pt "
                           "--dataset ../shared/data/kodak "
                           "--exports int8=RUNS/exports/qQ-dpa8-TAG-sS-int8 "
                           "[exact=RUNS/exports/q3-dpa8-TAG-s0-exact] "
                           "-o RUNS/deploy_quality_qQ-dpa8-TAG-sS.json"),
        "deploy_speed": ("python benchmarks/deploy_speed.py --checkpoint RUNS/q3-dpa8-channel-s0.pt "
                         "--also int8-tensor=RUNS/q3-dpa8-tensor-s0.pt "
                         "--also int8-tensor-out-g_s=RUNS/q3-dpa8-tensor-out-g_s-s0.pt "
                         "--image ../shared/data/kodak/kodim01.png --rounds 7 "
                         "-o RUNS/deploy_speed_per_tensor.json"),
        "summary": f"python benchmarks/per_tensor_summary.py --runs RUNS -o {out}"}
    for tag in (*TAGS, "tensor-out-g_a+g_s"):
        gran = "channel" if tag == "channel" else "tensor"
        outq = " --quantize-outputs " + tag.split("-out-")[1].replace("+", ",") if "-out-" in tag else ""
        commands["train"][tag] = TRAIN.format(py=PY, q="Q", lmbda="LAMBDA(Q)", gran=gran, outq=outq,
                                              seed="S", tag=tag)
        commands["eval"][tag] = (f"dqsearch eval --checkpoint RUNS/q{{1,2,3,4}}-dpa8-{tag}-s0.pt "
                                 f"--dataset ../shared/data/kodak --name 'DPA-8 {tag}' --threads 1 "
                                 f"-o RUNS/eval-dpa8-{tag}-s0.json")

    quality, fake, deployed = {}, {}, {}
    for tag in (*TAGS, "tensor-out-g_a+g_s"):
        for q in LAMBDAS:
            for seed in (0, 1):
                dq = _load(runs / f"deploy_quality_q{q}-dpa8-{tag}-s{seed}.json")
                if dq is None:
                    continue
                rows = dq["rows"]
                d = [r["int8:psnr_torch_file"] - r["psnr_torch_integer"] for r in rows
                     if r.get("int8:psnr_torch_file") is not None]
                entry = {"images": len(rows), "torch_bpp": dq["means"]["bpp_torch_integer"],
                         "torch_psnr": dq["means"]["psnr_torch_integer"],
                         "int8_decoder_psnr": dq["means"]["int8:psnr_torch_file"],
                         "int8_mean_delta_db": statistics.fmean(d), "int8_worst_delta_db": min(d),
                         "int8_worst_image": min(rows, key=lambda r: r["int8:psnr_torch_file"]
                                                 - r["psnr_torch_integer"])["image"],
                         "images_below_minus_0.1_db": sum(v < -0.1 for v in d),
                         "broken_streams": dq["deltas"]["int8"]["torch_file_broken (> 1 dB below)"],
                         "refused_streams": dq["deltas"]["int8"]["decode_errors"],
                         "int8_own_encode_bpp": dq["means"]["int8:bpp_own"],
                         "int8_own_encode_psnr": dq["means"]["int8:psnr_own"]}
                if "exact" in dq["deltas"]:
                    entry["exact_mean_delta_db"] = dq["deltas"]["exact"]["torch_file_mean_db"]
                    entry["exact_worst_delta_db"] = dq["deltas"]["exact"]["torch_file_worst_db"]
                quality[f"q{q}-{tag}-s{seed}"] = entry
        ev = _load(runs / f"eval-dpa8-{tag}-s0.json")
        if ev is not None:
            fake[tag] = {"bpp": ev["results"]["bpp"], "psnr": ev["results"]["psnr-rgb"],
                         "lambdas": [p["lmbda"] for p in ev["points"]]}
        pts = [(quality[k]["torch_bpp"], quality[k]["int8_decoder_psnr"]) for k in
               (f"q{q}-{tag}-s0" for q in LAMBDAS) if k in quality]
        if len(pts) == len(LAMBDAS):
            bpp, psnr = _curve(pts)
            deployed[tag] = {"bpp": bpp, "psnr": psnr}
            write_json(out.with_name(f"{out.stem}_deployed_int8_{tag}.json"), {
                "name": f"DPA-8 {tag}, deployed int8 decoder (ONNX Runtime)",
                "description": "PyTorch's default streams decoded by `dqsearch export`'s int8 decoder, "
                               "24 Kodak images", "results": {"bpp": bpp, "psnr-rgb": psnr}})

    bd = {"fake_quantized": {}, "deployed_int8_decoder": {}}
    for name, curves in (("fake_quantized", fake), ("deployed_int8_decoder", deployed)):
        if "channel" not in curves:
            continue
        anchor = _curve(list(zip(curves["channel"]["bpp"], curves["channel"]["psnr"], strict=True)))
        for tag in TAGS[1:]:
            if tag in curves:
                test = _curve(list(zip(curves[tag]["bpp"], curves[tag]["psnr"], strict=True)))
                bd[name][f"{tag} vs channel"] = _bd(anchor, test)
    if "channel" in fake and "channel" in deployed:
        for tag in TAGS:
            if tag in deployed:
                bd["deployed_int8_decoder"][f"deployed {tag} vs fake-quantized channel"] = _bd(
                    _curve(list(zip(fake["channel"]["bpp"], fake["channel"]["psnr"], strict=True))),
                    _curve(list(zip(deployed[tag]["bpp"], deployed[tag]["psnr"], strict=True))))

    seeds = {}
    for tag in TAGS:
        pair = [_load(runs / p) for p in (f"eval-dpa8-{tag}-s0.json", f"eval-q3-dpa8-{tag}-s1.json")]
        if all(pair):
            s0 = {"bpp": pair[0]["results"]["bpp"][2], "psnr": pair[0]["results"]["psnr-rgb"][2]}
            s1 = {"bpp": pair[1]["results"]["bpp"][0], "psnr": pair[1]["results"]["psnr-rgb"][0]}
            seeds[tag] = {"seed0": s0, "seed1": s1}

    unit = _load(runs / "deploy_quality_q3-dpa8-tensor-s0-unit.json")
    unit_range = None if unit is None else {
        "what": "per-tensor q3 seed 0 (no output quantizers), g_s.6 requantized over [0, 1] instead of "
                "its calibrated range",
        "commands": ["python benchmarks/int8_unit_output_range.py RUNS/exports/q3-dpa8-tensor-s0-int8 "
                     "RUNS/exports/q3-dpa8-tensor-s0-int8-unit",
                     "python benchmarks/deploy_quality.py --checkpoint RUNS/q3-dpa8-tensor-s0.pt --dataset "
                     "../shared/data/kodak --exports int8-unit=RUNS/exports/q3-dpa8-tensor-s0-int8-unit "
                     "-o RUNS/deploy_quality_q3-dpa8-tensor-s0-unit.json"],
        "mean_delta_db": unit["deltas"]["int8-unit"]["torch_file_mean_db"],
        "worst_delta_db": unit["deltas"]["int8-unit"]["torch_file_worst_db"]}

    longer = _load(runs / "eval-q3-1000.json")
    longer_qat = None if longer is None else {
        "what": "λ 0.013 seed 0, 1000 QAT steps instead of 300 (else the same): per channel, "
                "per tensor + g_s outputs",
        "command": "dqsearch train ... --steps 1000 ... ; dqsearch eval --checkpoint "
                   "RUNS/q3-dpa8-channel-s0-1000.pt RUNS/q3-dpa8-tensor-out-g_s-s0-1000.pt "
                   "--dataset ../shared/data/kodak --threads 1 -o RUNS/eval-q3-1000.json",
        "points": [{"checkpoint": Path(p["checkpoint"]).name, "bpp": p["mean"]["bpp"],
                    "psnr": p["mean"]["psnr"]} for p in longer["points"]]}

    speed = _load(runs / "deploy_speed_per_tensor.json")
    speed_rows = None
    if speed is not None:
        speed_rows = {n: {side: {k: v[side][k] for k in ("median_ms", "speedup_vs_fp32", "wall_median_ms")
                                 if k in v[side]}
                          for side in ("encoder", "decoder", "decoder_integer_h_s") if side in v}
                      for n, v in speed["variants"].items()}
        speed_rows = {"machine": speed["machine"], "clock": speed["clock"], "rounds": speed["rounds"],
                      "date": speed["date"], "variants": speed_rows}

    write_json(out, {
        "issue": "17 item 3: deployed int8 decoder within 0.1 dB of the fake-quantized codec",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": 1,
                    "load_average_at_summary": os.getloadavg()},
        "runs": "RUNS = " + str(runs) + " (checkpoints and exports outside the repository)",
        "lambdas": LAMBDAS, "commands": commands,
        "deploy_quality": quality, "fake_quantized_rd": fake, "deployed_int8_decoder_rd": deployed,
        "bd_rate_pchip": bd, "seed_pairs_q3": seeds, "experiment_last_layer_unit_range": unit_range,
        "longer_qat_q3": longer_qat,
        "speed": speed_rows})
    print(json.dumps({"bd": bd, "seeds": seeds}, indent=1))
    for k, v in quality.items():
        print(f"{k:32s} torch {v['torch_bpp']:.4f} bpp {v['torch_psnr']:.3f} dB  int8 mean "
              f"{v['int8_mean_delta_db']:+.4f} worst {v['int8_worst_delta_db']:+.4f} "
              f"({v['int8_worst_image']})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
