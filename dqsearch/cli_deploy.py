"""`dqsearch export`, and what `compress` / `decompress --runtime DIR` run (argument parsing only;
the work is in dqsearch.deploy and the deployment part of the export's backend)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import Command, RegistryChoices, height_width, int_list


def _kib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1024:.0f} KiB"


def cmd_export(args: argparse.Namespace) -> int:
    from .data import list_images, load_image
    from .deploy.artifact import Options, export_model
    from .models import resolve_checkpoint

    given = {k: getattr(args, k) for k in ("arithmetic", "hyper", "subpixel", "int8_weights",
                                           "decide_input", "threads")}
    opts = Options(**{k: v for k, v in given.items() if v is not None})  # else Options' defaults
    images = [load_image(p).unsqueeze(0) for p in list_images(args.images)] if args.images else None
    if images:
        from .codec import PAD_MULTIPLE
        from .data import pad_to_multiple

        images = [pad_to_multiple(x, PAD_MULTIPLE)[0] for x in images]
    store = export_model(resolve_checkpoint(args.checkpoint), args.output, args.backend, opts,
                         profiles=args.profile, images=images, calibration=args.calibration,
                         force=args.force)
    import json

    for folder in sorted((Path(args.output) / "profiles").iterdir()):
        if not (folder / "profile.json").is_file():
            continue
        info = json.loads((folder / "profile.json").read_text())
        s = info["size_bytes"]
        kept = [t for t, d in info["decisions"].items() if d["subpixel"]]
        bits = ",".join(map(str, info["bits"]))
        print(f"{folder.name}: bits {bits}; packed model {_kib(s['packed_model'])} "
              f"(paper FP32 x b/32: {_kib(s['paper_fp32_x_bbar_over_32'])}, FP32 {_kib(s['fp32_model'])}), "
              f"artifacts {_kib(s['files_total'])}; sub-pixel kept in {', '.join(kept) or 'none'}; "
              f"built in {info['build_seconds']:.1f} s")
    print(f"wrote {args.output} (model {store.manifest['model_id']}, backend {args.backend})")
    return 0


def cmd_compress_runtime(args: argparse.Namespace) -> int:
    from .deploy.files import compress_file

    enc, info = compress_file(args.runtime, args.image, args.output, args.threads or 1)
    times = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in info["times"].items())
    misses = [e for e in info["events"] if e.get("cache") == "miss"]
    miss = f"; profile built now (cache miss, {misses[0]['seconds']:.1f} s)" if misses else ""
    print(f"{args.output}: {len(enc.data)} bytes, {enc.bpp:.4f} bpp, {enc.width}x{enc.height}, "
          f"profile {info['profile']} ({times}){miss}")
    _print_timing(args, info, f"compress {args.image} ({enc.width}x{enc.height})")
    return 0


def _print_timing(args: argparse.Namespace, info: dict, title: str) -> None:
    """`--timing`: the per-stage table (session creation and cache misses are outside it)."""
    if not getattr(args, "timing", False):
        return
    from .deploy.stages import table

    st = info["stages"]
    print(table(st.wall, st.cpu, f"{title}, {st.threads} thread(s); excludes session creation"))


def cmd_decompress_runtime(args: argparse.Namespace) -> int:
    from .codec import check_output
    from .deploy.files import decompress_file

    check_output(args.output, args.file)
    x_hat, header, info = decompress_file(args.runtime, args.file, args.threads or 1, args.output)
    times = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in info["times"].items())
    misses = [e for e in info["events"] if e.get("cache") == "miss"]
    miss = f"; profile built now (cache miss, {misses[0]['seconds']:.1f} s)" if misses else ""
    print(f"{args.output}: {header.width}x{header.height}, profile {info['profile']} ({times}){miss}")
    _print_timing(args, info, f"decompress {args.file} ({header.width}x{header.height})")
    return 0


def add_runtime_args(parser: argparse.ArgumentParser, what: str) -> None:
    """`--runtime DIR` and `--timing` of `compress` (what="encode") and `decompress` ("decode")."""
    parser.add_argument("--runtime", metavar="DIR",
                        help=f"{what} through the artifacts of `dqsearch export -o DIR`")
    parser.add_argument("--timing", action="store_true",
                        help="with --runtime: print a per-stage table (transforms, entropy coding, "
                             "I/O; wall and thread CPU time)")


class Export(Command):
    name = "export"
    help = "export a checkpoint to integer execution on a backend"
    run = staticmethod(cmd_export)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", help="QAT checkpoint path or embedded:Q (default: the embedded model)")
        p.add_argument("--backend", default="ort-cpu",
                       help="a backend with a deployment part (`dqsearch backends` says which deploy)")
        p.add_argument("-o", "--output", required=True, help="export folder")
        # the export options: None means the default of deploy.artifact.Options (defined there)
        p.add_argument("--arithmetic", metavar="MODE",
                       choices=RegistryChoices("dqsearch.deploy.artifact", "ARITHMETICS"),
                       help="g_a/g_s: int8 (default) = QLinearConv (fast, per-tensor activations: "
                            "exact for a model trained with --activation-granularity tensor "
                            "--quantize-outputs, an approximation otherwise), exact = the learned QDQ "
                            "with float convs (slow, bit-faithful)")
        p.add_argument("--hyper", metavar="MODE",
                       choices=RegistryChoices("dqsearch.deploy.artifact", "HYPER"),
                       help="entropy parameters: integer-only h_s (default; bit-exact across machines "
                            "and with dqsearch.deploy.torch_codec; streams are tagged), or the float h_s "
                            "in the backend (reads `dqsearch compress` streams, but not bit-exactly)")
        p.add_argument("--subpixel", metavar="MODE",
                       choices=RegistryChoices("dqsearch.deploy.artifact", "SUBPIXEL"),
                       help="ConvTranspose as Conv + PixelShuffle: auto (default) where a deconvolution "
                            "runs in int8 (the graph the ort-cpu latency table times), timed (both forms "
                            "timed at export, the faster kept), on, off")
        p.add_argument("--int8-weights", metavar="MODE",
                       choices=RegistryChoices("dqsearch.deploy.artifact", "WEIGHT_MODES"),
                       help="exact (default): learned zero-points kept (per channel where needed); "
                            "symmetric: zero-point 0, clipping 8-bit outliers (a faster QLinearConv)")
        p.add_argument("--decide-input", type=height_width,
                       help="HxW the timed decision is timed at (default 512x768)")
        p.add_argument("--profile", type=int_list, action="append",
                       help="also build this profile (comma-separated bits in layer order; repeatable)")
        p.add_argument("--images", help="build the profiles the selectors pick for these images")
        p.add_argument("--calibration", help="images for the int8 output ranges (default: bundled samples)")
        p.add_argument("--threads", type=int, help="intra-op threads for timing decisions (default 1)")
        p.add_argument("--force", action="store_true", help="replace an existing export")


COMMANDS = (Export,)
