"""Files from strangers (issue 18): crafted bitstreams, size bombs, typed garbage, secrets in URLs,
path escapes, in-place overwrites and kills during a save. Every case ends in one clear line."""

import json
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dqsearch.cli import error_line, main
from dqsearch.codec import BitstreamError, Header, decode, encode, pack, unpack
from dqsearch.data import load_image, sample_images_dir, save_image
from dqsearch.fuzzing import STRING_KINDS, crafted, run_forked
from dqsearch.models import load_checkpoint, resolve_checkpoint, save_checkpoint
from dqsearch.storage_url import redact, scrub
from dqsearch.streamcheck import expected_layout


@pytest.fixture(scope="module")
def emb():
    """The bundled embedded:1 model (N=64, M=96): the one the issue crashed."""
    return load_checkpoint(resolve_checkpoint("embedded:1"))


@pytest.fixture(scope="module")
def template(emb, sample_paths):
    x = load_image(sample_paths[0])[:, :64, :64].unsqueeze(0).contiguous()
    return encode(emb.model, emb.model_id, x).data


def _stream(emb, template, size, strings=None, shape=None):
    h = unpack(template)[0]
    pad = -(-size // 64) * 64
    shape = expected_layout(emb.model, pad, pad).shape if shape is None else shape
    return pack(Header(h.model_id, size, size, h.profile_bits), strings, shape)


# --- crafted streams ------------------------------------------------------------------------------
def test_issue_streams_end_in_clear_errors(emb, template):
    """The issue's 70-byte 2048x2048 file with empty strings (was SIGSEGV), short strings, shape
    and batch bombs, and a stream CompressAI would assert on: all BitstreamError, nothing decoded."""
    cases = {
        "empty strings at 2048 px": _stream(emb, template, 2048, [[b""], [b""]]),
        "6-byte strings": _stream(emb, template, 256, [[b"\x01" * 6], [b"\x02" * 6]]),
        "latent shape [4096, 4096, 1, 1]": _stream(emb, template, 64, [[b"\0" * 8], [b"\0" * 8]],
                                                   [4096, 4096, 1, 1]),
        "batch of 1024": _stream(emb, template, 64, [[b"\0" * 8] * 1024, [b"\0" * 8] * 1024]),
        "one string group": _stream(emb, template, 64, [[b"\0" * 8]]),
    }
    assert len(cases["empty strings at 2048 px"]) < 80
    for what, blob in cases.items():
        with pytest.raises(BitstreamError) as e:
            decode(emb.model, emb.model_id, blob)
        assert len(str(e.value)) < 300, what


def test_structure_fuzz_forked_64_to_2048_px(emb, template):
    """Hostile strings under valid headers from 64 to 2048 px, each decoded in a forked child, and
    again with different garbage in the child's free heap: no signal, no hang, no traceback, and
    the same bytes always give the same pixels (before the guard: SIGSEGV and changing images)."""
    rnd = random.Random(18)
    counts = {64: 14, 512: 7, 2048: 3}
    seen = {"image": 0, "error": 0}
    for size, n in counts.items():
        pad = -(-size // 64) * 64
        shape = expected_layout(emb.model, pad, pad).shape
        kinds = STRING_KINDS if size < 2048 else ("empty", "words", "ones")
        for i in range(n):
            blob = crafted(template, size, size, shape, rnd, kinds[i % len(kinds)])
            dec = lambda b: decode(emb.model, emb.model_id, b)[0]  # noqa: E731
            first = run_forked(dec, blob, 60, (BitstreamError,))
            assert first.kind in ("image", "error"), (size, kinds[i % len(kinds)], first)
            seen[first.kind] += 1
            if first.kind == "image":
                again = run_forked(dec, blob, 60, (BitstreamError,), dirty=i)
                assert again.kind == "image" and again.digest == first.digest, (size, i)
    assert seen["image"] >= 5 and seen["error"] >= 5


def test_short_strings_decode_identically_across_processes(emb, template):
    """A 64x64 stream with minimal 8-byte strings: the decoder reads past them into the zero
    padding, never into whatever memory follows; so every run gives the same image."""
    blob = _stream(emb, template, 64, [[b"\x5a" * 8], [b"\xa5" * 8]])
    dec = lambda b: decode(emb.model, emb.model_id, b)[0]  # noqa: E731
    digests = {run_forked(dec, blob, 60, (BitstreamError,), dirty=s).digest for s in range(3)}
    assert len(digests) == 1 and "" not in digests


# --- memory budget --------------------------------------------------------------------------------
def test_large_image_refused_with_its_name_and_memory(tmp_path, capsys):
    """An 8000x8000 PNG (a few hundred KB, under the 64 MP limit) would need > 6 GB to encode:
    refused before its pixels are decoded, naming the image and the memory."""
    big = tmp_path / "big.png"
    Image.new("1", (8000, 8000)).save(big)
    assert big.stat().st_size < 400_000
    assert main(["compress", str(big), "-o", str(tmp_path / "big.dqs"), "--checkpoint", "embedded:1"]) == 2
    err = capsys.readouterr().err
    assert "big.png" in err and "GiB" in err and "--memory-limit" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "big.dqs").exists()


def test_decode_refuses_a_header_beyond_the_memory_limit(emb, template, sample_paths, tmp_path):
    x = load_image(sample_paths[0])[:, :256, :256].unsqueeze(0).contiguous()
    data = encode(emb.model, emb.model_id, x).data
    with pytest.raises(ValueError, match="memory limit"):
        decode(emb.model, emb.model_id, data, limit=2**20)
    decode(emb.model, emb.model_id, data)  # within the default 4 GiB


# --- checkpoints ------------------------------------------------------------------------------------
def _raw(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory):
    from dqsearch.models import build_model

    model = build_model("bmshj2018-hyperprior", N=8, M=8)
    model.update(force=True)
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(path, model, "bmshj2018-hyperprior", {"N": 8, "M": 8}, meta={"lmbda": 0.01})
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["arch_args"].update(N=20000), "arch_args.N"),
    (lambda r: r["arch_args"].update(N="64"), "arch_args.N"),
    (lambda r: r.update(arch_args=[8, 8]), "arch_args"),
    (lambda r: r["meta"].update(model_id="ab"), "meta.model_id"),
    (lambda r: r["meta"].update(lmbda=float("nan")), "meta.lmbda"),
    (lambda r: r.update(architecture="nope"), "architecture"),
    (lambda r: r.update(policy={"bits": "x", "mode": "fixed"}), "policy"),
    (lambda r: r.update(stray=1), "unknown field 'stray'"),
    (lambda r: r["state_dict"].update({"g_a.0.weight": "w"}), "not a tensor"),
    (lambda r: r["state_dict"].update({"g_a.0.weight": torch.zeros(1).expand(4096, 4096, 5, 5)}),
     "the model needs"),
    (lambda r: r["state_dict"].update({"entropy_bottleneck._quantized_cdf":
                                       torch.zeros(1, dtype=torch.int32).expand(1 << 16, 1 << 15)}),
     "far beyond"),
    (lambda r: r["state_dict"]["entropy_bottleneck.quantiles"].copy_(
        torch.tensor([-1e9, 0.0, 1e9]).expand(8, 1, 3)), "spans"),
    (lambda r: r["state_dict"]["g_s.0.weight"].fill_(float("nan")), "NaN"),
    (lambda r: r["state_dict"].update({"g_a.9.weight": torch.zeros(1)}), "did you mean"),
])
def test_checkpoint_bombs_and_garbage(tiny_ck, tmp_path, edit, message):
    raw = _raw(tiny_ck)
    edit(raw)
    path = tmp_path / "bad.pt"
    torch.save(raw, path)
    assert path.stat().st_size < 2_000_000
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=message) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and len(str(e.value)) < 400
    assert time.perf_counter() - t0 < 5


# --- latency tables ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table_dict():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "latency_models"
    return json.loads((root / "sim-npu" / "bmshj2018-hyperprior-M96-N64-768x512.json").read_text())


def _first_layer(d):
    return next(iter(d["layers"].values()))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["metadata"].update(bits="8"), "metadata.bits"),
    (lambda d: d["metadata"].update(input_shape=[1, 3, 60000, 60000]), "input_shape"),
    (lambda d: d["metadata"].update(input_shape="768x512"), "metadata.input_shape"),
    (lambda d: _first_layer(d)["latency"]["8"].update(samples=[float("nan")]), "samples"),
    (lambda d: _first_layer(d)["latency"]["8"].update(n="5"), "latency.8.n"),
    (lambda d: _first_layer(d)["spec"].update(kernel=5), "spec.kernel"),
    (lambda d: d.update(transitions=[{"from": "g_a.0", "to": "g_a.2", "cost": {"int8>int16": -3.0}}]),
     "cannot save time"),
    (lambda d: d.update(transitions=[{"from": "g_a.0", "to": "g_a.2", "cost": {"int8>int99": 1.0}}]),
     "two different containers"),
    (lambda d: d.update(layerz={}), "did you mean 'layers'"),
    (lambda d: d.update(layers=[]), "layers"),
])
def test_latency_table_garbage(table_dict, tmp_path, edit, message):
    from dqsearch.latency import LatencyTable, LatencyTableError

    d = json.loads(json.dumps(table_dict))
    edit(d)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(d))
    with pytest.raises(LatencyTableError, match=message) as e:
        LatencyTable.load(path)
    assert str(path) in str(e.value)


# --- results JSON -------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    '{"results": {"bpp": "0.1", "psnr-rgb": [30]}}',
    '{"results": {"bpp": [], "psnr-rgb": []}}',
    '{"results": {"bpp": [0.1, 0.2], "psnr-rgb": [30, NaN]}}',
    '{"results": [1, 2]}',
    "[1, 2]",
    '{"results": {"bpp": [0.1, 0.2], "psnr-rgb": [30]}}',
])
def test_bd_rate_typed_garbage_is_one_line(tmp_path, capsys, content):
    good = tmp_path / "a.json"
    good.write_text('{"results": {"bpp": [0.1, 0.2, 0.4], "psnr-rgb": [28, 30, 32]}}')
    bad = tmp_path / "b.json"
    bad.write_text(content)
    assert main(["bd-rate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "b.json" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- study files ------------------------------------------------------------------------------------
BASE = 'name = "s"\nfamily = ["embedded:1"]\n{extra}\n[[methods]]\nname = "FP32"\nkind = "fp32"\n{more}'


@pytest.mark.parametrize("extra, more, message", [
    ('datset = "x"', "", "did you mean 'dataset'"),
    ('output = "/tmp/elsewhere"', "", "absolute path"),
    ('output = "../../x"', "", "leaves"),
    ('cache = "a/../../x"', "", "leaves"),
    ('dataset = "{shared}/../../etc"', "", "leaves"),
    ("", '[[methods]]\nname = "F"\nkind = "study-front"\nstudy = "../../../x"\n', "plain name"),
    ("", '[[methods]]\nname = "FP32"\nkind = "fp32"\n', "is given twice"),
    ("", '[[methods]]\nname = "fp32"\nkind = "fp32"\n', "share the file name"),
    ("", '[[methods]]\nname = "Q"\nbits = "8"\n', r"methods\[1\].bits"),
    ("", '[[methods]]\nname = "Q"\nbits = 8\nsteps = true\n', r"methods\[1\].steps"),
    ("limit = 0", "", "limit"),
    ("", '[[methods]]\nname = "Q"\nbits = 99\n', r"methods\[1\].bits: expected less than or equal to 32"),
    ("", '[[methods]]\nname = "Q"\ncandidates = [1, 8]\n', "bit-width must be"),
])
def test_study_file_refusals(tmp_path, extra, more, message):
    from dqsearch.compare import Benchmark, BenchmarkError

    text = BASE.format(extra=extra, more=more)
    if extra.startswith("name"):
        text = text.replace('name = "s"\n', "", 1)
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(BenchmarkError, match=message) as e:
        Benchmark.load(path)
    assert str(path) in str(e.value)
    assert not (tmp_path.parent / "x").exists()


def test_study_name_with_a_path_is_refused(tmp_path):
    from dqsearch.compare import Benchmark, BenchmarkError

    path = tmp_path / "s.toml"
    path.write_text(BASE.format(extra="", more="").replace('name = "s"', 'name = "../../x"'))
    with pytest.raises(BenchmarkError, match="plain name"):
        Benchmark.load(path)


# --- storage URLs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, secret", [
    ("postgresql://dq:hun#ter2@127.0.0.1:1/nodb", "hun#ter2"),
    ("postgresql://dq:a/b?c=d@127.0.0.1:1/nodb", "a/b?c=d"),
    ("postgresql://dq:p%40ss%23word@127.0.0.1:1/nodb", "p@ss#word"),
    ("postgresql://127.0.0.1:1/nodb?user=dq&password=sekrit99", "sekrit99"),
])
def test_storage_secrets_never_printed(url, secret, capsys):
    shown = redact(url)
    assert secret not in shown and "***" in shown
    assert secret not in scrub(f"failed: {url} (password {secret})", url)
    assert main(["worker", "--study-name", "x", "--storage", url, "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert secret not in err and "***" in err and len(err.strip().splitlines()) == 1


def test_sqlite_storage_never_creates_folders(tmp_path, capsys):
    target = tmp_path / "nonexistent" / "dir" / "x.db"
    assert main(["worker", "--study-name", "x", "--storage", f"sqlite:///{target}", "--trials", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nonexistent").exists()


def test_study_arguments_checked_before_any_work(capsys):
    for args in (["--bit-sets", "1,99"], ["--trials", "-3"], ["--val-limit", "0"]):
        with pytest.raises(SystemExit) as e:
            main(["study", "--latency-table", "t.json", "--target-latency", "5ms", *args])
        assert e.value.code == 2
    assert "2..16" in capsys.readouterr().err


# --- files written where and how the user expects ---------------------------------------------------------
def test_compress_and_decompress_never_replace_their_input(tmp_path, sample_paths, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.asarray(Image.open(sample_paths[0]))[:64, :64]).save(photo)
    before = photo.read_bytes()
    assert main(["compress", str(photo), "-o", str(photo)]) == 2
    assert photo.read_bytes() == before and "input" in capsys.readouterr().err
    stream = tmp_path / "photo.dqs"
    assert main(["compress", str(photo), "-o", str(stream)]) == 0
    kept = stream.read_bytes()
    assert main(["decompress", str(stream), "-o", str(stream)]) == 2
    assert stream.read_bytes() == kept
    assert main(["decompress", str(stream), "-o", str(tmp_path)]) == 2  # an existing folder
    assert main(["decompress", str(tmp_path / "missing.dqs"), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "missing.dqs does not exist" in err
    assert "Traceback" not in err


def test_a_59_byte_stream_is_one_line(tmp_path, capsys):
    h = Header("0123456789abcdef", 64, 64, ())
    blob = pack(h, [[b"\0" * 8]], [1, 1])
    f = tmp_path / "tiny.dqs"
    f.write_bytes(blob)
    assert len(blob) < 80
    assert main(["decompress", str(f), "-o", str(tmp_path / "o.png"), "--checkpoint", "embedded:1"]) == 2
    err = capsys.readouterr().err
    assert "tiny.dqs" in err and len(err.strip().splitlines()) == 1


def test_kill_during_save_leaves_the_old_or_the_new_image(tmp_path):
    """SIGKILL at random moments while a large PNG is being written over an existing one: the
    file is always a whole PNG, the old one or the new one."""
    out = tmp_path / "out.png"
    old = torch.zeros(1, 3, 1024, 1024)
    new = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    save_image(old, out)
    rnd = random.Random(0)
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            try:
                while True:
                    save_image(new, out)
            finally:
                os._exit(0)
        time.sleep(rnd.uniform(0.02, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        x = load_image(out)
        assert x.shape == (3, 1024, 1024)
        assert torch.equal(x, old[0]) or torch.allclose(x, new[0], atol=1 / 255)


def test_long_messages_are_capped():
    line = error_line(ValueError("x" * 209_000))
    assert len(line) < 700 and "more characters" in line


def test_study_file_paths_inside_its_folder_are_accepted(tmp_path):
    from dqsearch.compare import Benchmark

    path = tmp_path / "s.toml"
    path.write_text(BASE.format(extra='output = "out/a"\ndataset = "{samples}"', more=""))
    s = Benchmark.load(path)
    assert s.output == (tmp_path / "out" / "a").resolve() and s.dataset == sample_images_dir().resolve()



def test_study_show_of_a_missing_study_creates_nothing(tmp_path, capsys):
    folder = tmp_path / "ghost"
    assert main(["study", "show", "ghost", "-o", str(folder)]) == 2
    assert not folder.exists() and "no study database" in capsys.readouterr().err


def test_compare_only_names_an_unknown_method(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(BASE.format(extra="", more=""))
    assert main(["compare", str(path), "--only", "FP23"]) == 2
    assert "did you mean 'FP32'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--crop", "32", "--steps", "1", "-o", "{tmp}/x.pt"], "multiple of 64"),
    (["profile", "--backend", "sim-npu", "--input", "100000x100000", "-o", "{tmp}/t.json"], "at most 16 MP"),
    (["study", "show", "x", "--storage", "postgresql://dq:pa#ss/wo?rd@127.0.0.1:1/db"], "dq:***@"),
])
def test_more_one_line_refusals(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "pa#ss" not in err
    assert not list(tmp_path.iterdir())
