"""The shared vocabulary, on the ground floor: every layer of dqsearch may import it, it imports
nothing of dqsearch. Bit-widths (`FP32` = 32 means a float layer) and the integer container each
executes in, a convolution as a backend sees it (`LayerSpec`), a latency `Measurement`, and input
sizes (`parse_input_shape`, `DEFAULT_INPUT`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a module is built: the CLI's parser needs none of it
    from torch import nn

FP32 = 32

#: The transforms an int8 deployment runs with integer kernels (`dqsearch export --arithmetic`
#: applies to these; the hyper transforms are always exact) and where `quantize_outputs` may put
#: learned output quantizers.
INT8_TRANSFORMS = ("g_a", "g_s")


def container_of(bits: int) -> str:
    """The integer container a bit-width executes in: int8 for 2..8, int16 for 9..16, fp32 for 32."""
    if bits == FP32:
        return "fp32"
    if 2 <= bits <= 8:
        return "int8"
    if 9 <= bits <= 16:
        return "int16"
    raise ValueError(f"no container for {bits}-bit layers: use 2..16 bits or 32 (FP32)")


CONV, DECONV = "conv", "deconv"


# --- measurements -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """Latency statistics in milliseconds; `samples` keeps the raw timings (one per repeat)."""

    median: float
    mean: float
    std: float
    min: float
    max: float
    n: int
    samples: tuple[float, ...] = ()
    unit: str = "ms"

    @classmethod
    def from_samples(cls, samples: Iterable[float]) -> Measurement:
        xs = tuple(float(s) for s in samples)
        if not xs:
            raise ValueError("a measurement needs at least one sample")
        bad = [s for s in xs if not math.isfinite(s) or s < 0]
        if bad:
            raise ValueError(f"latency samples must be finite and non-negative, got {bad[:3]}")
        return cls(median=statistics.median(xs), mean=statistics.fmean(xs),
                   std=statistics.pstdev(xs) if len(xs) > 1 else 0.0,
                   min=min(xs), max=max(xs), n=len(xs), samples=xs)

    @classmethod
    def exact(cls, ms: float) -> Measurement:
        """A computed (not timed) latency, e.g. from an analytical model: one sample, no spread."""
        return cls.from_samples([ms])

    def value(self, statistic: str = "median") -> float:
        if statistic not in ("median", "mean", "min"):
            raise ValueError(f"statistic must be median, mean or min, got {statistic!r}")
        return float(getattr(self, statistic))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = [round(s, 6) for s in self.samples]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "measurement") -> Measurement:
        """Validate and load; errors name the offending field (`where` is its path in the file)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object with median/mean/std/min/max/n, got {d!r}")
        if d.get("unit", "ms") != "ms":
            raise ValueError(f"{where}.unit: only 'ms' is supported, got {d.get('unit')!r}")
        out = {}
        for key in ("median", "mean", "std", "min", "max"):
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{where}.{key}: expected a finite non-negative number, got {v!r}")
            out[key] = float(v)
        n = d.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{where}.n: expected a positive integer, got {n!r}")
        samples = d.get("samples", [])
        if not isinstance(samples, list) or not all(isinstance(s, (int, float)) for s in samples):
            raise ValueError(f"{where}.samples: expected a list of numbers")
        if out["min"] > out["median"] + 1e-9 or out["median"] > out["max"] + 1e-9:
            raise ValueError(f"{where}: min ≤ median ≤ max does not hold ({out['min']}, "
                             f"{out['median']}, {out['max']})")
        return cls(**out, n=n, samples=tuple(float(s) for s in samples))


# --- layer specs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One convolution as a backend needs it: op kind, hyper-parameters and the shapes it sees."""

    name: str
    op: str  # "conv" or "deconv" (ConvTranspose2d)
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True
    input_shape: tuple[int, int, int, int] = (1, 1, 1, 1)  # N, C, H, W
    output_shape: tuple[int, int, int, int] = (1, 1, 1, 1)

    def __post_init__(self) -> None:
        if self.op not in (CONV, DECONV):
            raise ValueError(f"layer {self.name}: op must be 'conv' or 'deconv', got {self.op!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"layer {self.name}: channels must divide by groups={self.groups}")

    @property
    def group(self) -> str:
        """The top-level transform the layer belongs to (g_a, h_s, …)."""
        return self.name.split(".")[0]

    @property
    def weight_count(self) -> int:
        return self.in_channels * self.out_channels // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward (batch included); for a transposed conv each input
        pixel scatters a full kernel, so the count follows the input, not the output."""
        n, _, h, w = self.input_shape if self.op == DECONV else self.output_shape
        per_pixel = self.in_channels // self.groups * self.kernel[0] * self.kernel[1]
        return n * h * w * self.out_channels * per_pixel

    @property
    def input_elements(self) -> int:
        return math.prod(self.input_shape)

    @property
    def output_elements(self) -> int:
        return math.prod(self.output_shape)

    def module(self) -> nn.Module:
        """A float torch layer with these hyper-parameters (random weights): for isolated timing."""
        from torch import nn

        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                  groups=self.groups, bias=self.bias)
        if self.op == DECONV:
            return nn.ConvTranspose2d(self.in_channels, self.out_channels, self.kernel,
                                      output_padding=self.output_padding, **kw)
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "spec") -> LayerSpec:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
        fields = cls.__dataclass_fields__
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
        missing = [k for k in ("name", "op", "in_channels", "out_channels", "kernel", "input_shape")
                   if k not in d]
        if missing:
            raise ValueError(f"{where}: missing fields {missing}")
        try:
            return cls(**{k: tuple(int(x) for x in v) if isinstance(v, list) else v for k, v in d.items()})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


DEFAULT_INPUT = "768x512"  # H×W every latency table, study and benchmark uses unless told
DEFAULT_LMBDA = 0.013  # rate-distortion λ where a checkpoint records none (the bundled family's)
# The QAT recipe every workflow starts from (train runs, study trials, benchmark methods): 300 steps
# of 8 random 128² crops at lr 1e-5 from an FP32 checkpoint.
QAT_STEPS, QAT_BATCH_SIZE, QAT_CROP, QAT_LR = 300, 8, 128, 1e-5
MAX_INPUT_BATCH = 16
MAX_INPUT_PIXELS = 16 * 2**20  # per image: a latency table for larger inputs is not useful


def parse_input_shape(shape: str | Sequence[int]) -> tuple[int, int, int, int]:
    """`"768x512"` (H×W), `(H, W)` or `(N, C, H, W)` → (N, C, H, W) with N=1, C=3 by default."""
    if isinstance(shape, str):
        try:
            dims = tuple(int(v) for v in shape.lower().replace("×", "x").split("x"))
        except ValueError:
            raise ValueError(f"input size {shape!r}: write HxW, e.g. 768x512") from None
    else:
        dims = tuple(int(v) for v in shape)
    if len(dims) == 2:
        dims = (1, 3, *dims)
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"input size {shape!r}: expected HxW or N,C,H,W with positive sizes")
    n, c, h, w = dims
    if n > MAX_INPUT_BATCH or c != 3 or h * w > MAX_INPUT_PIXELS:
        raise ValueError(f"input size {shape!r}: latency is profiled on one to {MAX_INPUT_BATCH} RGB "
                         f"images of at most {MAX_INPUT_PIXELS // 2**20} MP")
    return dims  # type: ignore[return-value]
