"""File-level codec through an export folder (what `compress/decompress --runtime DIR` call)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import write_bytes
from ..codec import BitstreamError, Encoded, Header, check_output, read_stream
from ..data import load_image
from .runtime import Runtime


def compress_file(folder: str | Path, image_path: str | Path, output: str | Path, threads: int = 1
                  ) -> tuple[Encoded, dict]:
    check_output(output, image_path)
    runtime = Runtime(folder, threads)
    enc, info = runtime.encode(load_image(image_path))
    write_bytes(output, enc.data)
    info["events"] = runtime.events
    return enc, info


def decompress_file(folder: str | Path, path: str | Path, threads: int = 1
                    ) -> tuple[torch.Tensor, Header, dict]:
    data = read_stream(path)
    try:
        return Runtime(folder, threads).decode(data)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None
