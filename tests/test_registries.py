"""The registries: quantizers (`@register_quantizer`) and benchmark method kinds (`@method_kind`);
a new entry is one class in one file, and the CLI and the benchmark-file schema read them."""

from __future__ import annotations

import pytest

from dqsearch import compare
from dqsearch.cli import build_parser
from dqsearch.quant.quantizer import QUANTIZERS, LearnableQuantizer, register_quantizer


def test_quantizers_are_registered_and_the_cli_reads_them(monkeypatch):
    assert {"dpa", "minmax", "pams"} <= set(QUANTIZERS)
    with pytest.raises(ValueError, match="registered twice"):
        register_quantizer("dpa")(LearnableQuantizer)
    monkeypatch.setitem(QUANTIZERS, "toy", LearnableQuantizer)
    args = build_parser().parse_args(["train", "-o", "x.pt", "--bits", "8", "--quantizer", "toy"])
    assert args.quantizer == "toy"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-o", "x.pt", "--quantizer", "nope"])


def test_method_kinds_are_registered():
    assert list(compare.METHOD_KINDS)[:5] == ["fp32", "ptq", "qat", "fmpq", "study-front"]
    with pytest.raises(ValueError, match="registered twice"):
        compare.method_kind(compare.QATMethod)


def test_a_new_method_kind_is_one_class(tmp_path, monkeypatch):
    """A kind registered at run time is accepted by the benchmark file's schema and parsed by it."""
    monkeypatch.setattr(compare, "METHOD_KINDS", dict(compare.METHOD_KINDS))

    @compare.method_kind
    class Copy(compare.FP32Method):
        name = "fp32-copy"

    path = tmp_path / "b.toml"
    path.write_text('name = "b"\nfamily = ["embedded:1"]\n[[methods]]\nname = "FP32"\nkind = "fp32"\n'
                    '[[methods]]\nname = "copy"\nkind = "fp32-copy"\n')
    bench = compare.Benchmark.load(path)
    assert [m.kind for m in bench.methods] == ["fp32", "fp32-copy"]
    assert isinstance(bench.methods[1].handler, Copy)
    assert Copy().checkpoints(bench, bench.methods[1], False)[0].name.endswith(".pt")


def test_a_new_method_kind_adds_its_own_fields(tmp_path, monkeypatch):
    """A kind's `schema_fields` are accepted by the benchmark file (and typed) with no schema edit."""
    monkeypatch.setattr(compare, "METHOD_KINDS", dict(compare.METHOD_KINDS))

    @compare.method_kind
    class Tagged(compare.FP32Method):
        name = "fp32-tagged"
        schema_fields = {"tag": str}

        def parse(self, m, ctx):
            method = super().parse(m, ctx)
            method.options["tag"] = m.get("tag")
            return method

    path = tmp_path / "b.toml"
    body = 'name = "b"\nfamily = ["embedded:1"]\n[[methods]]\nname = "t"\nkind = "fp32-tagged"\n'
    path.write_text(body + 'tag = "x"\n')
    assert compare.Benchmark.load(path).methods[0].options["tag"] == "x"
    path.write_text(body + "tag = 3\n")
    with pytest.raises(compare.BenchmarkError, match="tag"):
        compare.Benchmark.load(path)
