"""Schemas (pydantic, strict) of the files dqsearch reads from other people: study TOML files,
latency tables, checkpoint headers and results JSON. Every command validates through `validate`,
so a file gets the same one-line answer everywhere: the file, the path of the bad field in it, what
was expected, and for an unknown key the nearest known one ("did you mean").

Strict means no silent conversions: "300" is not 300, true is not 1, NaN and infinities are refused.
Sizes a file can declare (model widths, input shapes, list lengths) are bounded here, before
anything is allocated from them.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

MAX_WIDTH = 512  # N / M of a checkpoint: CompressAI's largest models use 320
MAX_SAMPLES = 100_000


MAX_FILE_BYTES = 256 * 2**20  # a study file, table or results JSON larger than this is not one


class SchemaError(ValueError):
    """A file that does not match its schema; the message names the file and the field."""


def read_text(path: Any, what: str) -> str:
    """A text file's contents, refusing one too large to be what it claims (before reading it)."""
    from pathlib import Path

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SchemaError(f"{what} {path} is {size / 2**20:.0f} MiB; no {what} is larger than "
                          f"{MAX_FILE_BYTES // 2**20} MiB")
    return path.read_text()


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, populate_by_name=True)


class Open(BaseModel):
    """Known keys typed, other keys kept (free-form metadata)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, populate_by_name=True)


Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Bits = Annotated[int, Field(ge=1, le=32)]


# --- validation with readable errors ----------------------------------------------------------------
def validate(schema: type[BaseModel], data: Any, where: str) -> BaseModel:
    """`data` checked against `schema`; a SchemaError naming `where` and the first bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise SchemaError(describe(schema, e, where)) from None


def describe(schema: type[BaseModel], error: ValidationError, where: str) -> str:
    errs = error.errors()
    first = errs[0]
    loc = tuple(first["loc"])
    path = _path(loc)
    if first["type"] == "extra_forbidden":
        known = _keys_at(schema, loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else f"; known keys: {', '.join(known)}"
        msg = f"{where}: unknown field {path!r}{hint}"
    elif first["type"] == "missing":
        msg = f"{where}: missing field {path!r}"
    elif first["type"] == "value_error":
        msg = f"{where}: {path + ': ' if path else ''}{_plain(first['msg'])}"
    else:
        got = first.get("input")
        text = repr(got)
        text = text if len(text) <= 60 else text[:57] + "..."
        msg = f"{where}: {path or 'the file'}: {_plain(first['msg'])}, got {text} ({type(got).__name__})"
    more = len(errs) - 1
    return msg + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _plain(msg: str) -> str:
    return msg.replace("Input should be", "expected").replace("Value error, ", "")


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union")):  # pydantic's validator frames
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _keys_at(schema: Any, loc: tuple) -> list[str]:
    """Field names (aliases) of the model found by following `loc` from `schema`."""
    t = schema
    for part in loc:
        t = _unwrap(t)
        if isinstance(part, int):
            args = typing.get_args(t)
            t = args[0] if args else Any
        elif isinstance(t, type) and issubclass(t, BaseModel):
            f = next((f for n, f in t.model_fields.items() if part in (n, f.alias)), None)
            t = f.annotation if f is not None else Any
        elif typing.get_origin(t) is dict:
            t = typing.get_args(t)[1]
        else:
            return []
    t = _unwrap(t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return sorted(f.alias or n for n, f in t.model_fields.items())
    return []


def _unwrap(t: Any) -> Any:
    while True:
        origin = typing.get_origin(t)
        if origin is Annotated:
            t = typing.get_args(t)[0]
        elif origin in (Union, types.UnionType):
            models = [a for a in typing.get_args(t) if a is not type(None)]
            t = models[0] if len(models) == 1 else next(
                (a for a in models if isinstance(a, type) and issubclass(a, BaseModel)), models[0])
        else:
            return t


def from_dataclass(cls: type, name: str, exclude: set[str] = frozenset(), **extra: Any) -> type[Strict]:
    """A strict schema with the fields of dataclass `cls` (tuples read as TOML/JSON lists)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (_listify(hints[f.name]), None) for f in dataclasses.fields(cls)
              if f.name not in exclude}
    return create_model(name, __base__=Strict, **fields, **extra)


def _listify(t: Any) -> Any:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is tuple:
        return list[_listify(args[0])] if args else list
    if origin in (Union, types.UnionType):
        return Union[tuple(_listify(a) for a in args)]  # noqa: UP007
    if origin is dict:
        return dict[args[0], Any]
    return t


# --- latency tables -----------------------------------------------------------------------------------
class MeasurementSchema(Strict):
    median: NonNeg
    mean: NonNeg
    std: NonNeg
    min: NonNeg
    max: NonNeg
    n: Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
    samples: Annotated[list[NonNeg], Field(max_length=MAX_SAMPLES)] = []
    unit: Literal["ms"] = "ms"


Dim = Annotated[int, Field(ge=1, le=65536)]
Pair = Annotated[list[Annotated[int, Field(ge=0, le=1024)]], Field(min_length=2, max_length=2)]
Shape4 = Annotated[list[Dim], Field(min_length=4, max_length=4)]


class LayerSpecSchema(Strict):
    name: str
    op: Literal["conv", "deconv"]
    in_channels: Dim
    out_channels: Dim
    kernel: Pair
    stride: Pair = [1, 1]
    padding: Pair = [0, 0]
    output_padding: Pair = [0, 0]
    dilation: Pair = [1, 1]
    groups: Dim = 1
    bias: bool = True
    input_shape: Shape4 = [1, 1, 1, 1]
    output_shape: Shape4 = [1, 1, 1, 1]


class LayerEntrySchema(Strict):
    spec: LayerSpecSchema
    latency: dict[str, MeasurementSchema]
    isolated: dict[str, MeasurementSchema] = {}


class TransitionSchema(Strict):
    from_: str = Field(alias="from")
    to: str
    cost: dict[str, Finite]


class TableMetadataSchema(Open):
    backend: str
    input_shape: Shape4
    bits: Annotated[list[Bits], Field(min_length=1, max_length=32)]
    containers: dict[str, str]
    statistic: Literal["median", "mean", "min"] = "median"
    method: str | None = None
    latency_by_container: bool = False
    capabilities: dict[str, str] = {}


class LatencyTableSchema(Strict):
    format: Literal["dqsearch-latency-table"]
    version: Literal[1]
    metadata: TableMetadataSchema
    layers: dict[str, LayerEntrySchema]
    fixed: MeasurementSchema | None = None
    transitions: list[TransitionSchema] = []
    complete: bool | None = None
    context_runs: dict[str, Any] = {}


# --- checkpoints ---------------------------------------------------------------------------------------
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


class CheckpointMetaSchema(Open):
    model_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")] | None = None
    lmbda: Positive | None = None
    finished: bool | None = None


class CheckpointSchema(Strict):
    """The top level of a checkpoint (tensors are checked against the model, not here)."""

    format: Literal["dqsearch-checkpoint"]
    version: int
    architecture: str
    arch_args: dict[Literal["N", "M"], Width]
    policy: dict[str, Any] | None = None
    state_dict: dict[str, Any]
    meta: CheckpointMetaSchema
    train_state: dict[str, Any] | None = None


# --- results JSON (CompressAI format) -----------------------------------------------------------------
class ResultsBlock(Open):
    bpp: Annotated[list[Positive], Field(min_length=1, max_length=10_000)]
    psnr_rgb: list[Finite | None] | None = Field(None, alias="psnr-rgb")
    ms_ssim_rgb: list[Annotated[float, Field(gt=0, lt=1)] | None] | None = Field(None, alias="ms-ssim-rgb")


class ResultsSchema(Open):
    name: str | None = None
    description: str | None = None
    results: ResultsBlock


# --- study files (dqsearch compare) ------------------------------------------------------------------
def _safe_name(v: str) -> str:
    """A name that becomes a file or folder name: no separators, no leading dot, not empty."""
    if not v or "/" in v or "\\" in v or v.startswith(".") or "\x00" in v:
        raise ValueError(f"{v!r} must be a plain name (no '/', '\\' or leading '.'); it names files")
    return v


SafeName = Annotated[str, AfterValidator(_safe_name)]
_study_schemas: dict[tuple, type[BaseModel]] = {}


def benchmark_file_schema(train_config: type, quant_policy: type, kinds: Sequence[str],
                          default_input: str, kind_fields: tuple[tuple[str, Any], ...] = ()
                          ) -> type[BaseModel]:
    """The schema of a `dqsearch compare` benchmark file, built once per argument set from the
    TrainConfig and QuantPolicy dataclasses (passed in, so this module imports no training code)
    so that a new training or quantization option is accepted without editing this file; `kinds`
    are the method kinds `compare` knows, `default_input` the latency input size, `kind_fields`
    (name, type) pairs of method fields that kinds add (optional, default None)."""
    key = (train_config, quant_policy, tuple(kinds), default_input, tuple(kind_fields))
    if key in _study_schemas:
        return _study_schemas[key]
    TrainConfig, QuantPolicy = train_config, quant_policy  # noqa: N806
    train = from_dataclass(TrainConfig, "TrainSection", data=(str | None, None))
    latency = create_model("LatencySection", __base__=Strict, tables=(list[str], []),
                           measure=(list[str], []), input=(str, default_input),
                           options=(dict[str, str | int | float | bool], {}))
    Range = Annotated[list[Finite], Field(min_length=2, max_length=2)]  # noqa: N806
    method_fields: dict[str, Any] = {}
    for cls, skip in ((QuantPolicy, {"overrides", "bits", "mode"}), (TrainConfig, set())):
        hints = typing.get_type_hints(cls)
        method_fields.update({f.name: (_listify(hints[f.name]), None) for f in dataclasses.fields(cls)
                              if f.name not in skip})
    method_fields.update(
        name=(Annotated[str, Field(min_length=1, max_length=200)], ...),
        kind=(Literal[tuple(kinds)], "qat"),
        bits=(Bits | None, None), candidates=(Annotated[list[Bits], Field(min_length=1)] | None, None),
        target_size=(Positive | None, None), target_latency=(str | None, None),
        latency_table=(str | None, None), study=(SafeName | None, None), storage=(str | None, None),
        backend=(str | None, None), trials=(Annotated[int, Field(ge=1, le=100_000)] | None, None),
        eta_range=(Range | None, None), gamma_range=(Range | None, None),
        bit_sets=(list[Annotated[list[Bits], Field(min_length=2)]] | None, None),
        val_limit=(Annotated[int, Field(ge=1)] | None, None), latency_form=(str | None, None),
        sampler=(Literal["tpe", "random"] | None, None),
        startup_trials=(Annotated[int, Field(ge=1, le=10_000)] | None, None), measure=(bool | None, None),
        backend_options=(dict[str, str | int | float | bool] | None, None))
    method_fields.update({k: (t | None, None) for k, t in kind_fields if k not in method_fields})
    method = create_model("Method", __base__=Strict, **method_fields)
    schema = create_model(
        "StudyFile", __base__=Strict, name=(SafeName, ...), description=(str, ""),
        dataset=(str | None, None), family=(list[str], ...), anchor=(str | None, None),
        output=(str | None, None), cache=(str | None, None),
        limit=(Annotated[int, Field(ge=1)] | None, None), bd_method=(Literal["pchip", "akima"], "pchip"),
        train=(train, None), latency=(latency, None), methods=(list[method], ...))
    _study_schemas[key] = schema
    return schema

