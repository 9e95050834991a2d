"""File-level codec through an export folder (what `compress/decompress --runtime DIR` call); the
file reading and writing are timed as the `read`/`write` stages next to the runtime's own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..atomic import write_bytes
from ..codec import BitstreamError, Encoded, Header, check_output, read_stream
from ..data import load_image, save_image
from .runtime import Runtime
from .stages import Stages


def compress_with(runtime: Runtime, image_path: str | Path, output: str | Path,
                  bits: tuple[int, ...] | None = None) -> tuple[Encoded, dict]:
    """Encode one image file with an open runtime (sessions reused: what a batch of files costs);
    `bits` forces a precision profile (default: the export's, or the selectors' choice)."""
    check_output(output, image_path)
    io = Stages(runtime.threads)
    with io("read"):
        image = load_image(image_path)
    enc, info = runtime.encode(image, bits)
    with io("write"):
        write_bytes(output, enc.data)
    info["stages"].merge(io)
    info["times"] = info["stages"].primary
    return enc, info


def decompress_with(runtime: Runtime | Callable[[], Runtime], path: str | Path,
                    output: str | Path | None = None) -> tuple[torch.Tensor, Header, dict]:
    """Decode one stream file with an open runtime (or one opened once the file is read: a missing
    file is named before a missing export); with `output`, also write the PNG (atomically)."""
    io = Stages()
    with io("read"):
        data = read_stream(path)
    if not isinstance(runtime, Runtime):
        runtime = runtime()
    io.threads = runtime.threads
    try:
        x_hat, header, info = runtime.decode(data)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None
    if output is not None:
        with io("write"):  # fast zlib level: the default level cost more than g_s (85 vs 68 ms)
            save_image(x_hat, output, png_level=1)
    info["stages"].merge(io)
    info["times"] = info["stages"].primary
    return x_hat, header, info


def compress_file(folder: str | Path, image_path: str | Path, output: str | Path, threads: int = 1
                  ) -> tuple[Encoded, dict]:
    runtime = Runtime(folder, threads)
    enc, info = compress_with(runtime, image_path, output)
    info["events"] = runtime.events
    return enc, info


def decompress_file(folder: str | Path, path: str | Path, threads: int = 1, output: str | Path | None = None
                    ) -> tuple[torch.Tensor, Header, dict]:
    """Decode `path` through the export in `folder` (and write `output` when given)."""
    return decompress_with(lambda: Runtime(folder, threads), path, output)
