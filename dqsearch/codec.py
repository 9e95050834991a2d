"""The dqsearch bitstream: a small versioned header (model id, image size, per-layer bit-widths)
followed by CompressAI's entropy-coded strings, so a decoder needs only the file and the checkpoint.

Layout (big-endian), version 2:
    magic "DQSB" | version u8 | crc32 u32 of everything after it | model id 8 bytes |
    height u16 | width u16 | layer count u16 | bits u8 × count | entropy-parameter arithmetic u8 |
    payload
The arithmetic byte says how the scale-table indexes were computed, so that a decoder that cannot
reproduce them bit for bit refuses the file instead of desynchronising the rANS stream (garbage):
`integer` (`dqsearch.integer.int_hyper`: identical on every engine and machine; the default wherever
the model allows it) or the float h_s of one engine (`float:torch`, `float:ort-cpu`,
`float:x86-int8`), which only that engine decodes. Version 1 (no byte; an optional payload tag "h")
is still read: its untagged streams are `float:v1`, which PyTorch decodes as before and other
engines refuse.
The payload is a tagged tree (bytes / list / dict / int) holding CompressAI's `strings` and
`shape`. Every length is checked against the bytes that remain, the image size is bounded before
anything is allocated, and the CRC turns any bit flip or truncation into a clear error instead of a
silently wrong image. Before entropy decoding, `streamcheck` holds the strings and latent shape to
what the model implies for that size and pads every string so CompressAI's rANS reader (which does
not bound its reads) stays inside its buffer. Encoding and decoding refuse images whose estimated
peak memory exceeds the memory limit (`memory_limit`), naming the image and the memory it needs.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .atomic import write_bytes
from .data import crop_padding, load_image, pad_to_multiple
from .quant.wrap import FP32, dynamic_layers, get_profile, quantized_layers, set_profile
from .streamcheck import LayoutError, checked_strings

MAGIC = b"DQSB"
PREAMBLE = len(MAGIC) + 5  # magic, version u8, crc32 u32: what `seal` puts before the body
VERSION = 2
READABLE_VERSIONS = (1, 2)
# entropy-parameter arithmetic: header byte ↔ name (0 is never written, so a zeroed byte is caught)
ARITHMETIC_CODES = {1: "integer", 2: "float:torch", 3: "float:ort-cpu", 4: "float:x86-int8"}
ARITHMETICS = (*ARITHMETIC_CODES.values(), "float:v1")
# who can decode a float stream bit-exactly: its own engine only
ENGINE_HINT = {
    "float:torch": "PyTorch: dqsearch decompress without --runtime",
    "float:v1": "PyTorch: dqsearch decompress without --runtime",
    "float:ort-cpu": "ONNX Runtime: dqsearch decompress --runtime DIR (an export of this model)",
    "float:x86-int8": "PyTorch's x86 int8 engine: dqsearch decompress --runtime DIR (an x86-int8 export "
                      "of this model)",
}
PAD_MULTIPLE = 64
MAX_SIDE = 16384
MAX_PIXELS = 64 * 1024 * 1024
MAX_FILE_BYTES = 512 * 2**20  # far above 24 bpp at 64 MP; a larger file is not a dqsearch stream
_MAX_DEPTH = 8
_MAX_ITEMS = 1 << 16
DEFAULT_MEMORY_LIMIT = 4 * 2**30  # bytes; DQSEARCH_MEMORY_LIMIT or --memory-limit change it


class BitstreamError(ValueError):
    """A file that cannot be decoded; the message says why."""


@dataclass
class Header:
    model_id: str  # 16 hex digits
    height: int
    width: int
    profile_bits: tuple[int, ...]  # per quantized layer, in the model's layer order (32 = FP32)
    hyper: str = "float:torch"  # entropy-parameter arithmetic: one of ARITHMETICS


# --- payload tree ---------------------------------------------------------------------------------
def _pack_tree(obj: Any, out: bytearray) -> None:
    if isinstance(obj, (bytes, bytearray)):
        out += b"B" + struct.pack(">I", len(obj)) + obj
    elif isinstance(obj, dict):
        out += b"D" + struct.pack(">H", len(obj))
        for k, v in obj.items():
            kb = str(k).encode()
            out += struct.pack(">B", len(kb)) + kb
            _pack_tree(v, out)
    elif isinstance(obj, (list, tuple, torch.Size)):
        out += b"L" + struct.pack(">H", len(obj))
        for v in obj:
            _pack_tree(v, out)
    elif isinstance(obj, int):
        out += b"I" + struct.pack(">q", obj)
    else:
        raise TypeError(f"cannot serialise {type(obj).__name__} in a bitstream")


class _Reader:
    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.pos = data, offset

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BitstreamError(f"file is truncated (reading {what})")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def tree(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise BitstreamError("payload is nested too deeply")
        tag = self.take(1, "payload tag")
        if tag == b"B":
            (n,) = self.unpack(">I", "string length")
            return self.take(n, "entropy-coded string")
        if tag == b"I":
            return self.unpack(">q", "integer")[0]
        if tag in (b"L", b"D"):
            (n,) = self.unpack(">H", "item count")
            if n > _MAX_ITEMS:
                raise BitstreamError("payload holds too many items")
            if tag == b"L":
                return [self.tree(depth + 1) for _ in range(n)]
            out = {}
            for _ in range(n):
                (kl,) = self.unpack(">B", "key length")
                key = self.take(kl, "key").decode("utf-8", "replace")
                out[key] = self.tree(depth + 1)
            return out
        raise BitstreamError(f"unknown payload tag {tag!r}")


# --- container ------------------------------------------------------------------------------------
def pack(header: Header, strings: Any, shape: Any) -> bytes:
    body = bytearray(bytes.fromhex(header.model_id))
    body += struct.pack(">HHH", header.height, header.width, len(header.profile_bits))
    body += bytes(header.profile_bits)
    codes = {v: k for k, v in ARITHMETIC_CODES.items()}
    if header.hyper not in codes:
        raise ValueError(f"cannot write entropy-parameter arithmetic {header.hyper!r}; "
                         f"one of {sorted(codes)}")
    body.append(codes[header.hyper])
    _pack_tree({"s": strings, "p": shape}, body)
    return seal(bytes(body))


def seal(body: bytes) -> bytes:
    """Magic, version and the body's CRC in front of `body`: the file `unpack` reads back."""
    return MAGIC + struct.pack(">BI", VERSION, zlib.crc32(body)) + body


def unpack(data: bytes) -> tuple[Header, Any, Any]:
    """Parse and validate a file's bytes; raises BitstreamError with the reason."""
    if len(data) == 0:
        raise BitstreamError("file is empty")
    if len(data) < PREAMBLE or data[:4] != MAGIC:
        raise BitstreamError("not a dqsearch bitstream (wrong magic number)")
    version, crc = struct.unpack(">BI", data[4:PREAMBLE])
    if version not in READABLE_VERSIONS:
        raise BitstreamError(f"bitstream format version {version}; this dqsearch reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))} (a newer dqsearch wrote it: upgrade)")
    body = data[PREAMBLE:]
    if zlib.crc32(body) != crc:
        raise BitstreamError("file is corrupted or truncated (checksum mismatch)")
    r = _Reader(body)
    model_id = r.take(8, "model id").hex()
    height, width, n_layers = r.unpack(">HHH", "image size")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or height * width > MAX_PIXELS:
        raise BitstreamError(f"header claims a {width}x{height} image, beyond the {MAX_SIDE} px / "
                             f"{MAX_PIXELS // 2**20} MP limit")
    bits = tuple(r.take(n_layers, "layer bit-widths"))
    if version >= 2:
        (code,) = r.take(1, "entropy-parameter arithmetic")
        if code not in ARITHMETIC_CODES:
            raise BitstreamError(f"unknown entropy-parameter arithmetic {code} (a newer dqsearch wrote "
                                 "the file: upgrade)")
        hyper = ARITHMETIC_CODES[code]
    payload = r.tree()
    if r.pos != len(body):
        raise BitstreamError("trailing bytes after the payload")
    tags = {"h"} if version == 1 else set()
    if not isinstance(payload, dict) or set(payload) - tags != {"s", "p"}:
        raise BitstreamError("payload lacks strings or shape")
    if version == 1:
        tag = payload.get("h", b"float")
        if tag not in (b"float", b"integer"):
            raise BitstreamError(f"unknown hyper-synthesis tag {tag!r}")
        hyper = "integer" if tag == b"integer" else "float:v1"
    _check_shape(payload["p"], height, width)
    return Header(model_id, height, width, bits, hyper), payload["s"], payload["p"]


def refuse_arithmetic(hyper: str, engine: str) -> None:
    """One clear line when `engine` cannot reproduce a stream's entropy parameters bit for bit."""
    own = hyper.removeprefix("float:") == engine or (engine == "torch" and hyper == "float:v1")
    if hyper == "integer" or own:
        return
    raise BitstreamError(f"file's entropy parameters come from the {hyper} hyper-synthesis, which only "
                         f"its own engine reproduces bit for bit; decode it with {ENGINE_HINT[hyper]}")


def _check_shape(shape: Any, height: int, width: int) -> None:
    """Latent shapes must follow from the image size, so a forged shape cannot force a huge decode."""
    hp, wp = -(-height // PAD_MULTIPLE) * PAD_MULTIPLE, -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
    allowed = {(hp // f, wp // f) for f in (4, 8, 16, 32, 64)}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list) and node and all(isinstance(v, int) for v in node):
            if len(node) < 2 or tuple(node[-2:]) not in allowed or any(v < 1 or v > 4096 for v in node):
                raise BitstreamError(f"latent shape {node} does not fit a {width}x{height} image")
        elif isinstance(node, list):
            for v in node:
                walk(v)
        else:
            raise BitstreamError("malformed latent shape")

    walk(shape)


def _is_model_id(text: str) -> bool:
    return isinstance(text, str) and len(text) == 16 and all(c in "0123456789abcdef" for c in text)


# --- memory budget --------------------------------------------------------------------------------
def parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5GiB' or a plain byte count."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise ValueError(f"memory limit {text!r}: write a size such as 4G or 512M") from None
    if not value > 0:
        raise ValueError(f"memory limit {text!r} must be positive")
    return int(value * scale)


def memory_limit() -> int:
    """Bytes one encode or decode may use: $DQSEARCH_MEMORY_LIMIT (e.g. 8G), else 4 GiB."""
    env = os.environ.get("DQSEARCH_MEMORY_LIMIT")
    return parse_bytes(env) if env else DEFAULT_MEMORY_LIMIT


def memory_needed(model: Any, height: int, width: int) -> int:
    """Estimated peak bytes to code an image: the padded pixels times 64 + 3·N bytes (N the
    model's widest early transform). Measured above the process's baseline for the N=64 embedded
    model: 197–211 B/px to encode, 235–245 B/px to decode at 2048 px; the estimate is 256."""
    hp, wp = -(-height // PAD_MULTIPLE) * PAD_MULTIPLE, -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
    return hp * wp * (64 + 3 * int(getattr(model, "N", 192)))


def check_memory(model: Any, height: int, width: int, what: str, limit: int | None = None) -> None:
    limit = memory_limit() if limit is None else limit
    need = memory_needed(model, height, width)
    if need > limit:
        raise MemoryBudgetError(
            f"{what} is {width}x{height}: coding it needs about {need / 2**30:.1f} GiB, over the "
            f"{limit / 2**30:.1f} GiB memory limit; raise it with --memory-limit (or "
            "DQSEARCH_MEMORY_LIMIT) on a machine that has the memory, or use a smaller image")


class MemoryBudgetError(ValueError):
    """An image that would need more memory than the limit allows."""


# --- coding ---------------------------------------------------------------------------------------
@dataclass
class Encoded:
    data: bytes
    profile: dict[str, int]
    encode_seconds: float
    height: int
    width: int

    @property
    def bpp(self) -> float:
        return 8 * len(self.data) / (self.height * self.width)


def _profile_for(model: nn.Module, x: Tensor) -> dict[str, int]:
    """The precision profile for this image: selectors decide in one inference pass, then the
    profile is forced so encoder and decoder run identical precisions in every layer."""
    layers = quantized_layers(model)
    if not layers:
        return {}
    set_profile(model, None)
    if dynamic_layers(model):
        model(x)
        return get_profile(model)
    return {n: (m.candidates[0] if m.mode == "fixed" else FP32) for n, m in layers.items()}


def _arithmetic(model: nn.Module, profile: dict[str, int], hyper: str) -> str:
    """The entropy-parameter arithmetic to encode with: `auto` is integer wherever the model allows."""
    from .integer.int_entropy import integer_unsupported

    if hyper not in ("auto", "integer", "float:torch"):
        raise ValueError(f"hyper must be auto, integer or float:torch, got {hyper!r}")
    if hyper == "float:torch":
        return hyper
    why = integer_unsupported(model, profile)
    if why and hyper == "integer":
        raise ValueError(f"the integer hyper-synthesis is not available: {why}")
    return "float:torch" if why else "integer"


@torch.no_grad()
def encode(model: nn.Module, model_id: str, image: Tensor, name: str = "image",
           limit: int | None = None, hyper: str = "auto") -> Encoded:
    """Compress a [1, 3, H, W] (or [3, H, W]) image in [0, 1] into dqsearch bytes. `hyper`: auto
    (integer entropy parameters wherever the model allows: portable to every engine), integer, or
    float:torch (PyTorch's float h_s: only PyTorch decodes the file)."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"expected one RGB image, got a tensor of shape {tuple(image.shape)}")
    _, _, h, w = image.shape
    if h > MAX_SIDE or w > MAX_SIDE or h * w > MAX_PIXELS:
        raise ValueError(f"image is {w}x{h}; the bitstream holds at most {MAX_SIDE} px per side")
    if not _is_model_id(model_id):
        raise ValueError(f"model id {model_id!r} is not 16 hex digits: the checkpoint's metadata is "
                         "damaged (a file written with it could not be decoded)")
    check_memory(model, h, w, name, limit)
    model.eval()
    t0 = time.perf_counter()
    x, _ = pad_to_multiple(image, PAD_MULTIPLE)
    profile = _profile_for(model, x)
    if profile:
        set_profile(model, profile)
    arithmetic = _arithmetic(model, profile, hyper)
    if arithmetic == "integer":
        strings, shape = _compress_integer(model, profile, x)
    else:
        out = model.compress(x)
        strings, shape = out["strings"], out["shape"]
    data = pack(Header(model_id, h, w, tuple(profile.values()), arithmetic), strings, shape)
    return Encoded(data, profile, time.perf_counter() - t0, h, w)


def _compress_integer(model: nn.Module, profile: dict[str, int], x: Tensor) -> tuple[list, Any]:
    """ScaleHyperprior.compress with the scale-table indexes from the integer h_s."""
    from .integer.int_entropy import integer_indexes

    y = model.g_a(x)
    z = model.h_a(torch.abs(y))
    z_strings = model.entropy_bottleneck.compress(z)
    z_hat = model.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
    y_strings = model.gaussian_conditional.compress(y, integer_indexes(model, profile, z_hat))
    return [y_strings, z_strings], z.size()[-2:]


def _latents_integer(model: nn.Module, profile: dict[str, int], strings: list, shape: Any) -> Tensor:
    """y_hat of an integer stream (strings already checked and padded)."""
    from .integer.int_entropy import integer_indexes

    z_hat = model.entropy_bottleneck.decompress(strings[1], shape)
    indexes = integer_indexes(model, profile, z_hat)
    return model.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype)


@torch.no_grad()
def latents(model: nn.Module, model_id: str, data: bytes, name: str = "file",
            limit: int | None = None) -> tuple[Tensor | None, Header, dict]:
    """Entropy-decode a file: (y_hat, header, state for `decode`). y_hat is None for models whose
    CompressAI `decompress` does not expose it (only ScaleHyperprior's float and integer paths do)."""
    header, strings, shape = unpack(data)
    refuse_arithmetic(header.hyper, "torch")
    if header.model_id != model_id:
        raise BitstreamError(f"file was written by model {header.model_id}, but the checkpoint is "
                             f"model {model_id}: decode with the checkpoint that encoded it")
    layers = list(quantized_layers(model))
    if len(layers) != len(header.profile_bits):
        raise BitstreamError(f"file has {len(header.profile_bits)} layer bit-widths, the model "
                             f"has {len(layers)} quantized layers")
    hp = -(-header.height // PAD_MULTIPLE) * PAD_MULTIPLE
    wp = -(-header.width // PAD_MULTIPLE) * PAD_MULTIPLE
    try:  # before any allocation the size implies: the rANS reader trusts these completely
        strings = checked_strings(model, hp, wp, strings, shape)
    except LayoutError as e:
        raise BitstreamError(str(e)) from None
    check_memory(model, header.height, header.width, name, limit)
    model.eval()
    profile = dict(zip(layers, header.profile_bits, strict=True))
    if layers:
        try:
            set_profile(model, profile)
        except ValueError as e:
            raise BitstreamError(f"file's precision profile does not fit the model: {e}") from None
    if header.hyper == "integer":
        from .integer.int_entropy import integer_unsupported

        why = integer_unsupported(model, profile)
        if why:
            raise BitstreamError(f"file uses integer entropy parameters, which this model cannot "
                                 f"compute: {why}")
    state = {"strings": strings, "shape": shape, "size": (hp, wp)}
    try:
        if header.hyper == "integer":
            return _latents_integer(model, profile, strings, shape), header, state
        if type(model).__name__ == "ScaleHyperprior":
            z_hat = model.entropy_bottleneck.decompress(strings[1], shape)
            indexes = model.gaussian_conditional.build_indexes(model.h_s(z_hat))
            return model.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype), header, state
        return None, header, state
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AssertionError) as e:
        raise BitstreamError(f"entropy-coded payload does not decode ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None


@torch.no_grad()
def decode(model: nn.Module, model_id: str, data: bytes, name: str = "file",
           limit: int | None = None) -> tuple[Tensor, Header]:
    """Decode bytes with the matching model; returns ([1, 3, H, W] in [0, 1], header)."""
    y_hat, header, state = latents(model, model_id, data, name, limit)
    try:
        if y_hat is not None:
            x_hat = model.g_s(y_hat)
        else:
            x_hat = model.decompress(state["strings"], state["shape"])["x_hat"]
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AssertionError) as e:
        raise BitstreamError(f"entropy-coded payload does not decode ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None
    if tuple(x_hat.shape[-2:]) != state["size"]:
        raise BitstreamError(f"decoded size {tuple(x_hat.shape[-2:])} does not match the header")
    _, pad = pad_to_multiple(torch.empty(1, 1, header.height, header.width), PAD_MULTIPLE)
    # garbage strings can decode to huge latents and NaN pixels: NaN becomes 0, not undefined bytes
    return crop_padding(x_hat, pad).nan_to_num(0.0, 1.0, 0.0).clamp(0, 1), header


# --- engines --------------------------------------------------------------------------------------
class Codec(Protocol):
    """One codec interface, several engines: `TorchCodec` (this module, PyTorch) and
    `dqsearch.deploy.runtime.RuntimeCodec` (an export run by a backend's deployment part). Every
    engine reads and writes the same bitstream; tests/test_codec_engines.py round-trips them all."""

    engine: str
    model_id: str

    def encode(self, image: Tensor) -> Encoded: ...

    def decode(self, data: bytes) -> tuple[Tensor, Header]: ...


@dataclass
class TorchCodec:
    """The PyTorch engine: `encode`/`decode` of this module with one model."""

    model: nn.Module
    model_id: str
    hyper: str = "auto"
    engine: str = "torch"

    def encode(self, image: Tensor) -> Encoded:
        return encode(self.model, self.model_id, image, hyper=self.hyper)

    def decode(self, data: bytes) -> tuple[Tensor, Header]:
        return decode(self.model, self.model_id, data)


def compress_file(model: nn.Module, model_id: str, image_path: str | Path, output: str | Path,
                  limit: int | None = None) -> Encoded:
    """Encode an image file into `output`, written atomically; never over the input itself."""
    check_output(output, image_path)
    width, height = image_size(image_path)
    check_memory(model, height, width, f"image {image_path}", limit)  # before decoding the pixels
    enc = encode(model, model_id, load_image(image_path), f"image {image_path}", limit)
    write_bytes(output, enc.data)
    return enc


def read_stream(path: str | Path) -> bytes:
    """A bitstream file's bytes; a missing, unreadable or oversized file is a BitstreamError naming it."""
    path = Path(path)
    if not path.exists():
        raise BitstreamError(f"bitstream {path} does not exist")
    if not path.is_file():
        raise BitstreamError(f"bitstream {path} is not a file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BitstreamError(f"{path} is {size / 2**20:.0f} MiB, larger than any dqsearch bitstream "
                             f"({MAX_FILE_BYTES // 2**20} MiB at most)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BitstreamError(f"cannot read {path}: {e.strerror}") from None
    if not data:
        raise BitstreamError(f"bitstream {path} is an empty file")
    return data


def decompress_file(model: nn.Module, model_id: str, path: str | Path,
                    limit: int | None = None) -> tuple[Tensor, Header]:
    data = read_stream(path)
    try:
        return decode(model, model_id, data, f"bitstream {path}", limit)
    except BitstreamError as e:
        raise BitstreamError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def check_output(output: str | Path, source: str | Path) -> None:
    """Refuse an output that is a folder or the input itself (it would be replaced by the result)."""
    out, src = Path(output), Path(source)
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a file name, e.g. {out / (src.stem + '.out')}")
    if out.exists() and src.exists() and os.path.samefile(out, src):  # also links to the input
        raise ValueError(f"output {out} is the input file; choose another name so the input is kept")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image

    from .data import ImageError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist") from None
    except Exception:  # unreadable: load_image gives the precise message
        load_image(path)
        raise
