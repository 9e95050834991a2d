import random

import pytest
import torch

from dqsearch.codec import (
    MAX_SIDE,
    BitstreamError,
    Header,
    decode,
    encode,
    pack,
    unpack,
)
from dqsearch.data import crop_padding, pad_to_multiple
from dqsearch.models import load_checkpoint
from dqsearch.quant.wrap import set_profile


@pytest.fixture(scope="module")
def ck(tiny_quant_checkpoint):
    return load_checkpoint(tiny_quant_checkpoint)


@pytest.fixture(scope="module")
def encoded(ck, sample_paths):
    from dqsearch.data import load_image

    x = load_image(sample_paths[1])[:, :48, :64].unsqueeze(0).contiguous()
    return x, encode(ck.model, ck.model_id, x)


def test_header_round_trip():
    h = Header("0123456789abcdef", 480, 641, (8, 6, 32, 10))
    strings = [[b"abc"], [b"", b"\x00\xff"]]
    shape = {"y": [[16, 32, 44]], "hyper": [8, 11]}  # 480x641 pads to 512x704
    data = pack(h, strings, shape)
    h2, s2, p2 = unpack(data)
    assert h2 == h and s2 == strings and p2 == shape


def _as_version_1(data: bytes, tag: bytes | None) -> bytes:
    """The same stream in format version 1: no arithmetic byte, an optional payload tag "h"."""
    import struct
    import zlib

    from dqsearch.codec import MAGIC, PREAMBLE, _pack_tree

    header, strings, shape = unpack(data)
    body = bytearray(data[PREAMBLE:PREAMBLE + 14 + len(header.profile_bits)])
    _pack_tree({"s": strings, "p": shape, **({"h": tag} if tag else {})}, body)
    return MAGIC + struct.pack(">BI", 1, zlib.crc32(bytes(body))) + bytes(body)


def test_arithmetic_is_in_the_header_and_version_1_is_still_read(ck, encoded):
    """Version 2 records the entropy-parameter arithmetic; PyTorch writes integer by default for a
    quantized ScaleHyperprior; version 1 files still decode (untagged ones as float:v1)."""
    x, enc = encoded
    header = unpack(enc.data)[0]
    assert enc.data[4] == 2 and header.hyper == "integer"
    ref, _ = decode(ck.model, ck.model_id, enc.data)
    old_integer = _as_version_1(enc.data, b"integer")
    assert unpack(old_integer)[0].hyper == "integer"
    assert torch.equal(decode(ck.model, ck.model_id, old_integer)[0], ref)
    float_data = encode(ck.model, ck.model_id, x, hyper="float:torch").data
    assert unpack(float_data)[0].hyper == "float:torch"
    old_float = _as_version_1(float_data, None)
    assert unpack(old_float)[0].hyper == "float:v1"
    assert torch.equal(decode(ck.model, ck.model_id, old_float)[0], decode(ck.model, ck.model_id,
                                                                           float_data)[0])
    bad = bytearray(enc.data)
    bad[9 + 14 + len(header.profile_bits)] = 0  # the arithmetic byte
    from dqsearch.codec import PREAMBLE, seal

    with pytest.raises(BitstreamError, match="unknown entropy-parameter arithmetic 0"):
        unpack(seal(bytes(bad[PREAMBLE:])))
    with pytest.raises(BitstreamError, match="version 3"):
        unpack(enc.data[:4] + b"\x03" + enc.data[5:])


def test_fp32_models_keep_the_float_arithmetic(sample_paths):
    from dqsearch.data import load_image
    from dqsearch.models import build_model

    model = build_model("bmshj2018-hyperprior", N=8, M=8).eval()
    model.update(force=True)
    x = load_image(sample_paths[0])[:, :32, :32].unsqueeze(0).contiguous()
    data = encode(model, "0123456789abcdef", x).data
    assert unpack(data)[0].hyper == "float:torch"
    with pytest.raises(ValueError, match="not quantized"):
        encode(model, "0123456789abcdef", x, hyper="integer")


@pytest.mark.parametrize("size", [(48, 64), (37, 53), (1, 1)])
def test_decode_reproduces_forward_for_any_size(ck, sample_paths, size):
    from dqsearch.data import load_image

    h, w = size
    x = load_image(sample_paths[2])[:, :h, :w].unsqueeze(0).contiguous()
    enc = encode(ck.model, ck.model_id, x)
    x_hat, header = decode(ck.model, ck.model_id, enc.data)
    assert x_hat.shape == x.shape and (header.height, header.width) == (h, w)
    assert header.profile_bits == tuple(enc.profile.values())
    with torch.no_grad():  # the decoder ran exactly the encoder's precision profile
        xp, pad = pad_to_multiple(x, 64)
        set_profile(ck.model, enc.profile)
        ref = crop_padding(ck.model(xp)["x_hat"], pad).clamp(0, 1)
    assert torch.equal(x_hat, ref)


def test_profiles_differ_per_image(ck, sample_paths):
    from dqsearch.data import load_image

    profiles = {tuple(encode(ck.model, ck.model_id, load_image(p)[:, :64, :64].unsqueeze(0)).profile.values())
                for p in sample_paths}
    assert len(profiles) > 1, "the selector should pick per image"


def test_bad_files_give_clear_errors(ck, encoded):
    _, enc = encoded
    data = enc.data
    cases = {
        b"": "empty",
        data[:-5]: "corrupted or truncated",
        data[:20]: "corrupted or truncated",
        b"XXXX" + data[4:]: "magic",
        data[:4] + bytes([9]) + data[5:]: "version 9",
    }
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    cases[bytes(flipped)] = "corrupted"
    for bad, msg in cases.items():
        with pytest.raises(BitstreamError, match=msg):
            decode(ck.model, ck.model_id, bad)


def test_wrong_model_id_refused(ck, encoded):
    with pytest.raises(BitstreamError, match="decode with the checkpoint that encoded it"):
        decode(ck.model, "ffffffffffffffff", encoded[1].data)


def test_huge_claimed_size_refused_before_decoding(ck):
    for h, w in [(MAX_SIDE + 1, 10), (65535, 65535)]:
        data = pack(Header(ck.model_id, h, w, (8,) * 14), [[b"x"]], [1, 1])
        with pytest.raises(BitstreamError, match="limit"):
            decode(ck.model, ck.model_id, data)
    data = pack(Header(ck.model_id, 64, 64, (8,) * 14), [[b"x"], [b"y"]], [5000, 5000])
    with pytest.raises(BitstreamError, match="does not fit"):
        decode(ck.model, ck.model_id, data)


def test_random_mutations_never_crash(ck, encoded):
    """A light fuzz: every mutated file decodes or raises BitstreamError."""
    data = encoded[1].data
    rnd = random.Random(0)
    for _ in range(200):
        b = bytearray(data)
        op = rnd.choice(["flip", "cut", "insert"])
        if op == "flip":
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op == "cut":
            b = b[: rnd.randrange(len(b))]
        else:
            b.insert(rnd.randrange(len(b)), rnd.randrange(256))
        try:
            decode(ck.model, ck.model_id, bytes(b))
        except BitstreamError:
            pass


_WITHOUT_ORT = """
import sys
import compressai.models  # torch's dynamo probes for onnx while compressai imports
for m in [k for k in sys.modules if k.split('.')[0] in ('onnx', 'onnxruntime', 'dqsearch_ort')]:
    del sys.modules[m]
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('onnx', 'onnxruntime', 'dqsearch_ort'):
            raise ImportError(f"no module named {name}")
sys.meta_path.insert(0, Block())
from dqsearch.cli import main
ck, png = sys.argv[1], sys.argv[2]
assert main(["compress", png, "-o", png + ".dqs", "--checkpoint", ck]) == 0
assert main(["decompress", png + ".dqs", "-o", png + ".out.png", "--checkpoint", ck]) == 0
assert not [k for k in sys.modules if k.startswith("onnx")]
assert main(["decompress", png + ".dqs", "-o", png + ".2.png", "--runtime", png]) == 2
assert main(["export", "--checkpoint", ck, "-o", png + ".export"]) == 2
"""


def test_integer_default_needs_no_onnx(tiny_quant_checkpoint, sample_paths, tmp_path):
    """Without onnx/onnxruntime the PyTorch codec (integer entropy parameters) works as before and
    --runtime is one clear line."""
    import subprocess
    import sys

    from dqsearch.data import load_image, save_image

    png = tmp_path / "in.png"
    save_image(load_image(sample_paths[0])[:, :40, :70], png)
    r = subprocess.run([sys.executable, "-c", _WITHOUT_ORT, str(tiny_quant_checkpoint), str(png)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "holds no deployment" in r.stderr  # --runtime with no export folder
    assert "cannot deploy to ort-cpu" in r.stderr and "pip install" in r.stderr  # plugin missing
