"""Time a compiled module's `main` with TVM's `time_evaluator`, locally or on an RPC device.

One probe run sizes the measurement: `number` runs per repeat so that a repeat lasts at least
`min_repeat_ms` (short kernels are averaged past timer noise), and as many repeats as fit in
`budget_seconds`, between `min_repeats` and `repeats` (slow untuned kernels still get a median).
Each repeat's mean is one raw sample. `clock="thread"` instead times each call with the calling
thread's CPU clock (local, one thread only: TVM then runs every kernel on the calling thread), so
other processes' time slices do not count. Measured here (2 cores shared with 3 other busy
processes), one int8 layer: wall (time_evaluator) samples 15.4–36.7 ms, thread-clock samples
15.4–15.8 ms; whole-model wall samples swung by 50% between consecutive repeats.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class TimingOptions:
    repeats: int = 10  # most repeats (samples) per measurement
    min_repeats: int = 3
    min_repeat_ms: float = 20.0
    budget_seconds: float = 2.0  # target time per measurement (probe excluded)
    warmup: int = 1
    clock: str = "wall"  # "wall" (time_evaluator) or "thread" (CPU time of this thread)

    def __post_init__(self) -> None:
        if self.clock not in ("wall", "thread"):
            raise ValueError(f"clock must be 'wall' or 'thread', got {self.clock!r}")
        if self.repeats < 1 or self.min_repeats < 1:
            raise ValueError("repeats and min_repeats must be at least 1")

    def plan(self, probe_ms: float) -> tuple[int, int]:
        """(number, repeat) for a kernel whose single run took `probe_ms`."""
        probe_ms = max(probe_ms, 1e-3)
        number = max(1, math.ceil(self.min_repeat_ms / probe_ms))
        fit = int(self.budget_seconds * 1000 / (number * probe_ms))
        return number, max(min(self.min_repeats, self.repeats), min(self.repeats, fit))


def _evaluator(vm: Any, dev: Any, number: int, repeat: int) -> Callable[..., Sequence[float]]:
    ev = vm.time_evaluator("main", dev, number=number, repeat=repeat)
    return lambda *args: [r * 1000.0 for r in ev(*args).results]


def _thread_runs(fn: Callable[..., Any], args: Sequence[Any], number: int, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.thread_time_ns()
        for _ in range(number):
            fn(*args)
        out.append((time.thread_time_ns() - t0) / 1e6 / number)
    return out


class Timer:
    """Measures one VM's `main` with fixed inputs."""

    def __init__(self, vm: Any, dev: Any, args: Sequence[Any], options: TimingOptions) -> None:
        self.vm, self.dev, self.args, self.options = vm, dev, list(args), options
        self.number, self.repeat = 1, 1

    def calibrate(self) -> float:
        """Warm up, probe one run, choose number/repeat; returns the probe time (ms)."""
        for _ in range(self.options.warmup):
            self.vm["main"](*self.args)
        probe = self.run(1, 1)[0]
        self.number, self.repeat = self.options.plan(probe)
        return probe

    def run(self, number: int | None = None, repeat: int | None = None) -> list[float]:
        number, repeat = number or self.number, repeat or self.repeat
        if self.options.clock == "thread":
            return _thread_runs(self.vm["main"], self.args, number, repeat)
        return _evaluator(self.vm, self.dev, number, repeat)(*self.args)

    def measure(self) -> list[float]:
        self.calibrate()
        return self.run()
