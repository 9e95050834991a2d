"""Reliability campaign (issue 8): hostile bitstreams and images, kills during checkpoint writes."""

import io
import itertools
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dqsearch.codec import PREAMBLE, BitstreamError, decode, encode, seal
from dqsearch.data import ImageError, load_image
from dqsearch.fuzzing import mutate
from dqsearch.models import load_checkpoint


@pytest.fixture(scope="module")
def coded(tiny_quant_checkpoint, sample_paths):
    ck = load_checkpoint(tiny_quant_checkpoint)
    x = load_image(sample_paths[0])[:, :40, :56].unsqueeze(0).contiguous()
    return ck, encode(ck.model, ck.model_id, x).data


def test_fuzz_10000_mutated_bitstreams(coded):
    """Every mutated or truncated file ends in BitstreamError or a valid image, within a time
    bound and without allocating beyond the image-size limits."""
    ck, data = coded
    rnd = random.Random(1234)
    outcomes = {"error": 0, "image": 0}
    slowest = 0.0
    for i in range(10_000):
        blob = mutate(data, rnd, reseal=bool(i % 2))
        t0 = time.perf_counter()
        try:
            x, header = decode(ck.model, ck.model_id, blob)
            assert x.shape == (1, 3, header.height, header.width) and torch.isfinite(x).all()
            outcomes["image"] += 1
        except BitstreamError:
            outcomes["error"] += 1
        slowest = max(slowest, time.perf_counter() - t0)
    assert outcomes["error"] + outcomes["image"] == 10_000
    assert outcomes["error"] > 5_000
    assert slowest < 5.0, f"a decode took {slowest:.1f} s"


def test_resealed_header_claiming_a_huge_image_is_refused(coded):
    ck, data = coded
    body = bytearray(data[PREAMBLE:])
    body[8:12] = struct.pack(">HH", 65535, 65535)  # height, width right after the model id
    with pytest.raises(BitstreamError, match="limit"):
        decode(ck.model, ck.model_id, seal(bytes(body)))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")  # uint16 → 16-bit grayscale, 4 channels → RGBA
    return buf.getvalue()


def test_hostile_images_converted_or_refused_by_name(tmp_path):
    cases = {}
    (tmp_path / "empty.png").write_bytes(b"")
    cases["empty.png"] = "empty file"
    (tmp_path / "text.png").write_text("not an image at all")
    cases["text.png"] = "not a readable image"
    huge = tmp_path / "huge.png"  # a valid PNG header claiming 100000x100000, no pixel data
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
                     + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", 0) + b"IEND"
                     + struct.pack(">I", zlib.crc32(b"IEND")))
    cases["huge.png"] = "larger than"
    for name, msg in cases.items():
        with pytest.raises(ImageError, match=msg) as e:
            load_image(tmp_path / name)
        assert name in str(e.value)

    conversions = {
        "one.png": (np.zeros((1, 1, 3), np.uint8), False, (3, 1, 1)),
        "gray16.png": (np.full((4, 5), 40000, np.uint16), True, (3, 4, 5)),
        "rgba.png": (np.zeros((4, 5, 4), np.uint8), True, (3, 4, 5)),
    }
    for name, (arr, warns, shape) in conversions.items():
        (tmp_path / name).write_bytes(_png(arr))
        with pytest.warns(UserWarning, match=name) if warns else _nothing():
            x = load_image(tmp_path / name)
        assert tuple(x.shape) == shape and 0 <= x.min() and x.max() <= 1
    assert load_image(tmp_path / "gray16.png").max().item() == pytest.approx(40000 / 65535, abs=1e-4)
    Image.new("P", (6, 3), 7).save(tmp_path / "palette.png")
    Image.new("CMYK", (6, 3), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    for name in ("palette.png", "cmyk.jpg"):
        with pytest.warns(UserWarning, match=name):
            assert tuple(load_image(tmp_path / name).shape) == (3, 3, 6)
    img = Image.new("RGB", (8, 4), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert tuple(load_image(tmp_path / "rotated.jpg").shape) == (3, 8, 4)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_sigkill_during_training_keeps_a_loadable_checkpoint_and_resumes(tmp_path, sample_paths):
    """Kill training at random moments (checkpoints every step): the file on disk always loads,
    and --resume continues from its step with the stored optimizer state."""
    out = tmp_path / "run.pt"
    cmd = [sys.executable, "-m", "dqsearch.cli", "train", "--model", "bmshj2018-hyperprior", "--N", "16",
           "--M", "24", "--batch-size", "2", "--crop", "64", "--threads", "1", "--no-progress",
           "--data", str(sample_paths[0].parent), "--steps", "400", "--checkpoint-every", "1",
           "-o", str(out), "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rnd = random.Random(0)
    steps_seen = []
    for _ in range(3):
        before = out.stat().st_mtime_ns if out.exists() else 0
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while (not out.exists() or out.stat().st_mtime_ns == before) and time.time() < deadline:
            time.sleep(0.02)  # until this process has written its own checkpoint
        time.sleep(rnd.uniform(0.05, 0.6))  # then kill it at a random point, often mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ck = load_checkpoint(out, with_train_state=True)  # never a half-written file
        steps_seen.append(ck.train_state["step"])
        assert ck.train_state["optimizer"]["state"], "optimizer state travels with the checkpoint"
    assert all(b > a for a, b in itertools.pairwise(steps_seen)), f"each run resumed: {steps_seen}"


def _measured(table: dict) -> int:
    layers = table.get("layers", {}).values()
    return sum(len(e.get("isolated", {})) + len(e.get("latency", {})) for e in layers)


def test_sigkill_during_profiling_then_resume(tmp_path):
    """Kill `dqsearch profile` mid-table: what was measured stays, --resume completes the table
    with the same keys as an uninterrupted run and without re-measuring the saved entries."""
    import json

    pytest.importorskip("dqsearch_ort")
    base = [sys.executable, "-m", "dqsearch.cli", "profile", "--backend", "ort-cpu", "--threads", "1",
            "--model", "bmshj2018-hyperprior", "--N", "16", "--M", "24", "--input", "64x64",
            "--no-progress", "--option", "repeats=3", "--option", "warmup=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, cut = tmp_path / "full.json", tmp_path / "cut.json"
    subprocess.run([*base, "-o", str(full)], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([*base, "-o", str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cut.exists() and _measured(json.loads(cut.read_text())) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(cut.read_text())  # written atomically: always parseable
    assert not saved.get("complete"), "killed before the end"
    subprocess.run([*base, "-o", str(cut), "--resume"], env=env, check=True, capture_output=True)
    done, ref = json.loads(cut.read_text()), json.loads(full.read_text())
    assert done["complete"] and set(done["layers"]) == set(ref["layers"])
    kept = 0
    for layer, entry in saved["layers"].items():
        for kind in ("isolated", "latency"):
            for bits, m in entry.get(kind, {}).items():
                assert done["layers"][layer][kind][bits] == m, "measured entries are kept, not re-measured"
                kept += 1
    assert kept >= 3
