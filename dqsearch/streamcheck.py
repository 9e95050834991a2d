"""What a stream must look like before CompressAI's entropy decoder may see it.

CompressAI's rANS decoder (`RansDecoder.decode_with_indexes`) never checks the end of its buffer:
it reads 8 bytes to start, then at most one 32-bit word per decoded symbol (renormalisation) and
one per `GetBits` of the bypass mode, for as many symbols as the latent shape asks. A string
shorter than what the header implies is read past its end (a crash, or pixels that depend on
whatever memory follows: a different image on each run). So, before decoding:

- the latent shape must be exactly the one the model produces for the header's image size
  (a single image: batch 1), so nothing larger than the image implies is ever allocated;
- every string is a whole number of 32-bit words and at least the 8 bytes the coder flushes;
- every string is handed over followed by zero bytes covering every read the decoder can make
  for its symbol count (`margin`), so it stays inside its buffer and its output depends only on
  the file's bytes. A run of zero words decodes deterministically (the state stays in range and
  the bypass loop ends on the first zero nibble), verified by `benchmarks/fuzz_bitstreams.py
  --mode structure` at 64 to 2048 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compressai.models import Elic2022Official, FactorizedPrior, ScaleHyperprior
from torch import nn

# Zero bytes after a string per symbol it decodes, plus a constant. Measured
# (benchmarks/rans_read_extent.py): a decode that runs off its string reads at most one 32-bit word
# per symbol in steady state (4 bytes: a zero state decodes symbol 0 and renormalises once per
# symbol; a non-zero state refills less often), plus a burst of bypass reads at the start when the
# state's nibbles are all ones (under 1 KB; zero words end a bypass run). Twice the steady state
# plus 4 KiB was never more than half used; it costs 3 B/px for the N=64 model (~1.5% of a decode).
MARGIN_PER_SYMBOL = 8
MARGIN_CONSTANT = 4096
MIN_STRING = 8  # Rans64EncFlush writes two 32-bit words


class LayoutError(ValueError):
    """A stream whose strings or shape do not fit what its header and model imply."""


@dataclass(frozen=True)
class Layout:
    shape: Any  # the exact latent shape tree the model produces (lists of ints)
    symbols: tuple[int, ...]  # symbols each string decodes (an upper bound), in string order


def expected_layout(model: nn.Module, hp: int, wp: int) -> Layout:
    """The shape tree and per-string symbol counts of a padded hp×wp image for this model."""
    h16, w16, h64, w64 = hp // 16, wp // 16, hp // 64, wp // 64
    if isinstance(model, ScaleHyperprior):  # also mbt2018(-mean), cheng2020-*
        y = int(model.M) * h16 * w16
        return Layout([h64, w64], (y, int(model.entropy_bottleneck.channels) * h64 * w64))
    if isinstance(model, FactorizedPrior):
        return Layout([h16, w16], (int(model.entropy_bottleneck.channels) * h16 * w16,))
    if isinstance(model, Elic2022Official):
        groups = [int(g) for g in model.groups]
        y = tuple(g * h16 * w16 for g in groups for _ in (0, 1))  # anchors and non-anchors
        z = int(model.latent_codec["hyper"].entropy_bottleneck.channels) * h64 * w64
        return Layout({"y": [[g, h16, w16] for g in groups], "hyper": [h64, w64]}, (*y, z))
    raise LayoutError(f"no bitstream layout is known for {type(model).__name__}")


def margin(symbols: int) -> int:
    """Zero bytes to put after a string that decodes `symbols` symbols."""
    return MARGIN_PER_SYMBOL * symbols + MARGIN_CONSTANT


def checked_strings(model: nn.Module, hp: int, wp: int, strings: Any, shape: Any) -> list:
    """The strings, checked against the model's layout and padded with `margin` zero bytes, ready
    for `model.decompress(strings, shape)`; raises LayoutError naming what does not fit."""
    layout = expected_layout(model, hp, wp)
    flat = check_stream(layout, wp, hp, strings, shape)
    return [[padded(s, n)] for s, n in zip(flat, layout.symbols, strict=True)]


def check_stream(layout: Layout, wp: int, hp: int, strings: Any, shape: Any) -> list[bytes]:
    """One string per group (a single image), each a plausible rANS string, and exactly the
    layout's shape; returns the strings unpadded."""
    if shape != layout.shape:
        raise LayoutError(f"latent shape {_short(shape)} does not fit a {wp}x{hp} (padded) image "
                          f"for this model, which needs {layout.shape}")
    if not isinstance(strings, list) or len(strings) != len(layout.symbols):
        n = len(strings) if isinstance(strings, list) else type(strings).__name__
        raise LayoutError(f"payload has {n} entropy-coded string groups, the model needs "
                          f"{len(layout.symbols)}")
    out = []
    for i, group in enumerate(strings):
        if not isinstance(group, list) or len(group) != 1:
            n = len(group) if isinstance(group, list) else type(group).__name__
            raise LayoutError(f"string group {i} holds {n} images; a dqsearch file holds exactly one")
        s = group[0]
        if not isinstance(s, bytes):
            raise LayoutError(f"string group {i} holds a {type(s).__name__}, not bytes")
        if len(s) < MIN_STRING or len(s) % 4:
            raise LayoutError(f"entropy-coded string {i} is {len(s)} bytes; a rANS string is a whole "
                              f"number of 32-bit words, at least {MIN_STRING} bytes")
        out.append(s)
    return out


def padded(s: bytes, symbols: int) -> bytes:
    """`s` followed by the zero bytes that keep a decode of `symbols` symbols inside the buffer."""
    return s + bytes(margin(symbols))


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."
