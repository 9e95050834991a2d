"""Damaged bitstreams, the same for the reliability test and `benchmarks/fuzz_bitstreams.py`."""

from __future__ import annotations

import random

from .codec import PREAMBLE, seal


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
