"""File-level codec through an export folder (what `compress/decompress --runtime DIR` call); the
file reading and writing are timed as the `read`/`write` stages next to the runtime's own."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import write_bytes
from ..codec import BitstreamError, Encoded, Header, check_output, read_stream
from ..data import load_image
from .runtime import Runtime
from .stages import Stages


def compress_file(folder: str | Path, image_path: str | Path, output: str | Path, threads: int = 1
                  ) -> tuple[Encoded, dict]:
    check_output(output, image_path)
    runtime = Runtime(folder, threads)
    io = Stages(threads)
    with io("read"):
        image = load_image(image_path)
    enc, info = runtime.encode(image)
    with io("write"):
        write_bytes(output, enc.data)
    info["stages"].merge(io)
    info["times"] = info["stages"].primary
    info["events"] = runtime.events
    return enc, info


def decompress_file(folder: str | Path, path: str | Path, threads: int = 1, output: str | Path | None = None
                    ) -> tuple[torch.Tensor, Header, dict]:
    """Decode `path`; with `output`, also write the PNG (atomically), timed as the `write` stage."""
    io = Stages(threads)
    with io("read"):
        data = read_stream(path)
    try:
        x_hat, header, info = Runtime(folder, threads).decode(data)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None
    if output is not None:
        from ..data import save_image

        with io("write"):
            save_image(x_hat, output)
    info["stages"].merge(io)
    info["times"] = info["stages"].primary
    return x_hat, header, info
