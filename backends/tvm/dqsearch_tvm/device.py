"""Where compiled modules run: this process (tvm-cpu) or a board over TVM RPC (tvm-arm).

`Device.measure(jobs, measure)` loads every job's module and hands their timers to `measure`;
on a remote device the whole attempt is retried on a fresh session when the connection times
out or drops (boards reboot, trackers hand the slot to someone else), and after the last retry
a `BackendError` says what failed and how to check the board. Measurements already returned
are kept by the caller (the latency table is saved after every layer).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tvm
from tvm import relax

from dqsearch.backends import BackendError

from .timing import Timer, TimingOptions

log = logging.getLogger(__name__)
R = TypeVar("R")


@dataclass
class Job:
    executable: Any  # tvm.runtime.Executable
    inputs: Sequence[np.ndarray]


@contextlib.contextmanager
def local_threads(threads: int) -> Iterator[None]:
    """TVM's CPU thread pool at `threads` for this process and the tuning workers it starts
    (they read TVM_NUM_THREADS), and the caller's environment restored afterwards: a backend must
    not leave process-wide settings changed."""
    before = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = before


class LocalDevice:
    """The host CPU, in this process."""

    remote = False

    def __init__(self, threads: int = 1) -> None:
        self.threads = int(threads)
        self.dev = tvm.cpu()

    def describe(self) -> dict[str, Any]:
        return {"where": "local"}

    def measure(self, jobs: Sequence[Job], measure: Callable[[list[Timer]], R], timing: TimingOptions) -> R:
        with local_threads(self.threads):
            timers = []
            for job in jobs:
                vm = relax.VirtualMachine(job.executable, self.dev)
                timers.append(Timer(vm, self.dev, [tvm.runtime.tensor(x, self.dev) for x in job.inputs],
                                    timing))
            return measure(timers)


def parse_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{what} {value!r}: write HOST:PORT, e.g. 192.168.1.20:9190")
    return host, int(port)


def export_for(executable: Any, path: str | Path, compiler: str | None) -> Path:
    """A shared library of the module, linked with `compiler` (a cross g++) or the host's."""
    from tvm.support import cc

    path = Path(path)
    if compiler:
        executable.export_library(str(path), fcompile=cc.cross_compiler(compiler))
    else:
        executable.export_library(str(path))
    return path


def export_runtime_module(mod: Any, compiler: str | None) -> str:
    """meta-schedule `f_export`: link a tuning candidate for the board (runs in build workers)."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(compiler) if compiler else None)
    return path


def tuning_export(compiler: str | None) -> Callable[[Any], str]:
    return functools.partial(export_runtime_module, compiler=compiler)


class RemoteDevice:
    """A board running `python -m tvm.exec.rpc_server`, reached directly or through a tracker."""

    remote = True

    def __init__(self, *, tracker: str | None = None, key: str | None = None, rpc: str | None = None,
                 compiler: str | None = "aarch64-linux-gnu-g++", threads: int = 1,
                 session_timeout: float = 600, retries: int = 3, retry_wait: float = 5.0,
                 priority: int = 1, connect_timeout: float = 120.0) -> None:
        if bool(tracker) == bool(rpc):
            raise ValueError("tvm-arm needs a board: pass rpc_tracker=HOST:PORT with rpc_key=KEY, or "
                             "rpc=HOST:PORT for a server without tracker (--option KEY=VALUE)")
        if tracker and not key:
            raise ValueError("rpc_tracker needs rpc_key=KEY: the key the board's rpc_server registered with "
                             "(python -m tvm.exec.query_rpc_tracker --host H --port P lists them)")
        self.tracker = parse_address(tracker, "rpc_tracker") if tracker else None
        self.direct = parse_address(rpc, "rpc") if rpc else None
        self.key, self.compiler, self.threads = key, compiler or None, int(threads)
        self.session_timeout, self.retries, self.retry_wait = session_timeout, int(retries), retry_wait
        self.priority, self.connect_timeout = priority, float(connect_timeout)
        self._session: Any = None
        self._tmp = tempfile.TemporaryDirectory(prefix="dqsearch-tvm-rpc-")
        self._count = 0
        self.failures: list[str] = []

    def describe(self) -> dict[str, Any]:
        where = (f"tracker {self.tracker[0]}:{self.tracker[1]} key {self.key}" if self.tracker
                 else f"rpc server {self.direct[0]}:{self.direct[1]}")
        return {"where": where, "compiler": self.compiler or "host", "retries": self.retries}

    def _where(self) -> str:
        return self.describe()["where"]

    # --- sessions -----------------------------------------------------------------------------
    def session(self) -> Any:
        if self._session is None:
            from tvm import rpc

            if self.tracker:
                self._session = self._request_from_tracker()
            else:
                self._session = rpc.connect(*self.direct, session_timeout=self.session_timeout)
            try:
                self._session.get_function("runtime.config_threadpool")(1, self.threads)
            except Exception as e:  # older runtimes: the board's TVM_NUM_THREADS decides
                log.warning("could not set the board's thread count: %s", e)
        return self._session

    def _request_from_tracker(self) -> Any:
        """Ask the tracker for the board; a tracker queues requests for a key forever, so fail
        fast when no server has that key and give up after `connect_timeout` when all are busy."""
        from tvm import rpc

        tracker = rpc.connect_tracker(*self.tracker)
        servers = [s for s in tracker.summary().get("server_info", [])
                   if str(s.get("key", "")).split(":", 1)[-1] == self.key]
        if not servers:
            raise ConnectionError(f"no rpc_server is registered with key {self.key!r} at tracker "
                                  f"{self.tracker[0]}:{self.tracker[1]}")
        result: queue.Queue = queue.Queue(1)

        def request() -> None:
            try:
                result.put(tracker.request(self.key, priority=self.priority,
                                           session_timeout=self.session_timeout, max_retry=2))
            except Exception as e:  # handed to the caller
                result.put(e)

        threading.Thread(target=request, daemon=True).start()
        try:
            got = result.get(timeout=self.connect_timeout)
        except queue.Empty:
            raise TimeoutError(f"the tracker gave no free {self.key!r} board within "
                               f"{self.connect_timeout:.0f} s (all busy?)") from None
        if isinstance(got, Exception):
            raise got
        return got

    def reset(self) -> None:
        self._session = None

    def with_retries(self, what: str, fn: Callable[[Any], R]) -> R:
        """Run `fn(session)`; on a timeout or lost connection start a new session and try again."""
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                return fn(self.session())
            except (ValueError, TypeError, KeyError, AttributeError):
                raise  # a bug or bad input, not the board: retrying cannot help
            except Exception as e:  # RPCError, session timeouts, dropped sockets, a crashed server
                last = e
                self.failures.append(f"{what}: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
                log.warning("%s on %s failed (attempt %d/%d): %s", what, self._where(), attempt + 1,
                            self.retries + 1, str(e).strip().splitlines()[0][:200])
                self.reset()
                if attempt < self.retries:
                    time.sleep(self.retry_wait * (attempt + 1))
        raise BackendError(
            f"{what} failed {self.retries + 1} times on {self._where()}; last error: "
            f"{type(last).__name__}: {str(last).strip().splitlines()[0][:300]}. Measurements made so far "
            "are kept (rerun with --resume). Check that the board's rpc_server is running and registered "
            "(python -m tvm.exec.query_rpc_tracker --host HOST --port PORT), or raise "
            "--option rpc_retries=N") from last

    # --- running ------------------------------------------------------------------------------
    def measure(self, jobs: Sequence[Job], measure: Callable[[list[Timer]], R], timing: TimingOptions) -> R:
        if timing.clock != "wall":
            raise ValueError("clock=thread times this process; on an RPC board only clock=wall works")
        libs = []
        for job in jobs:
            self._count += 1
            libs.append(export_for(job.executable, Path(self._tmp.name) / f"mod{self._count}.so",
                                   self.compiler))

        def attempt(sess: Any) -> R:
            dev = sess.cpu()
            timers = []
            for job, lib in zip(jobs, libs, strict=True):
                sess.upload(str(lib))
                rlib = sess.load_module(lib.name)
                vm = relax.VirtualMachine(rlib, dev)
                timers.append(Timer(vm, dev, [tvm.runtime.tensor(x, dev) for x in job.inputs], timing))
            return measure(timers)

        return self.with_retries("measurement", attempt)
