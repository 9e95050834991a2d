"""Damaged and crafted bitstreams, and a forked-child runner that survives what they do to a
decoder; shared by the reliability tests and `benchmarks/fuzz_bitstreams.py`."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .codec import PREAMBLE, Header, pack, seal, unpack

SHAPE_BOMBS = ([4096, 4096, 1, 1], [1, 4096, 4096], [2, 2], [0, 0], [65535, 1])


def mutate(data: bytes, rnd: random.Random, reseal: bool) -> bytes:
    """1–4 bit flips, cuts or inserted bytes. With `reseal` the damage hits the body and the
    header gets a valid CRC again, so the parser and the entropy decoder see it, not the checksum."""
    b = bytearray(data[PREAMBLE:] if reseal else data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.random()
        if op < 0.5 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op < 0.75:
            b = b[: rnd.randrange(len(b) + 1)]
        else:
            b.insert(rnd.randrange(len(b) + 1), rnd.randrange(256))
    return seal(bytes(b)) if reseal else bytes(b)


STRING_KINDS = ("empty", "short", "words", "ones", "long", "transplant", "bomb")


def crafted(template: bytes, height: int, width: int, expected_shape: Any, rnd: random.Random,
            kind: str) -> bytes:
    """A stream with a valid CRC and a header for height×width, built around the strings of a
    real `template` stream (its model id, bits and string count) but with hostile contents:
    empty, short, word-aligned random, all-ones, long random, a smaller image's strings
    ("transplant"), or a latent shape / batch bomb."""
    header, strings, _ = unpack(template)
    header = Header(header.model_id, height, width, header.profile_bits, header.hyper)
    n = len(strings)

    def string() -> bytes:
        if kind == "empty":
            return b""
        if kind == "short":
            return rnd.randbytes(rnd.randrange(0, 16))
        if kind == "words":
            return rnd.randbytes(4 * rnd.randint(2, 24))
        if kind == "ones":
            return b"\xff" * (4 * rnd.randint(2, 24))
        return rnd.randbytes(4 * rnd.randint(64, 2048))

    shape = expected_shape
    if kind == "transplant":
        new = [list(g) for g in strings]
    elif kind == "bomb":
        new = [[string() for _ in range(rnd.choice((1, 2, 1024)))] for _ in range(n)]
        shape = rnd.choice(SHAPE_BOMBS + (expected_shape,))
        kind = "long"
    else:
        new = [[string()] for _ in range(n)]
    return pack(header, new, shape)


@dataclass
class Outcome:
    kind: str  # "image", "error", "traceback", "signal", "hang"
    detail: str = ""
    digest: str = ""  # sha256 of the decoded pixels
    seconds: float = 0.0
    rss_mib: float = 0.0


def flip_bits(data: bytes, rnd: random.Random, start: int) -> bytes:
    """1–8 bit flips after byte `start` of the body, re-sealed: real strings, damaged."""
    b = bytearray(data[PREAMBLE:])
    for _ in range(rnd.randint(1, 8)):
        b[rnd.randrange(start, len(b))] ^= 1 << rnd.randrange(8)
    return seal(bytes(b))


def _dirty_heap(rnd: random.Random) -> None:
    """Fill freed heap memory with random bytes, so a decoder reading past its buffer would see
    different garbage than in another child (a fork alone copies the same heap)."""
    junk = [os.urandom(rnd.choice((16, 64, 256, 4096, 65536, 1 << 20))) for _ in range(200)]
    del junk


def run_forked(decode: Callable[[bytes], Any], data: bytes, timeout: float,
               expected: tuple[type, ...], dirty: int | None = None) -> Outcome:
    """Decode `data` in a forked child: a crash is a signal, a hang is killed after `timeout`, an
    exception outside `expected` is a traceback. The child reports its decoded pixels' digest and
    peak RSS, so the parent can check that decoding the same bytes twice gives the same image
    (`dirty`: a seed to fill the child's free heap with random bytes first)."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(r)
        if dirty is not None:
            _dirty_heap(random.Random(dirty))
        try:
            x = decode(data)
            out = {"kind": "image", "digest": hashlib.sha256(x.numpy().tobytes()).hexdigest()}
        except expected as e:
            out = {"kind": "error", "detail": str(e)}
        except BaseException as e:  # reported to the parent, not handled
            out = {"kind": "traceback", "detail": f"{type(e).__name__}: {e}"[:300]}
        out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    chunks: list[bytes] = []
    deadline = t0 + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return Outcome("hang", seconds=timeout)
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    seconds = time.perf_counter() - t0
    if os.WIFSIGNALED(status):
        return Outcome("signal", signal.Signals(os.WTERMSIG(status)).name, seconds=seconds)
    try:
        out = json.loads(b"".join(chunks))
    except ValueError:
        detail = f"child exited {os.WEXITSTATUS(status)} without a result"
        return Outcome("traceback", detail, seconds=seconds)
    return Outcome(out["kind"], out.get("detail", ""), out.get("digest", ""), seconds, out["rss_mib"])
