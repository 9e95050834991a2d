"""tvm-arm's RPC path end to end: a TVM RPC tracker and server started here on 127.0.0.1, with
the host's x86 target standing in for the board (upload, load_module, time_evaluator, retries)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from dqsearch_tvm import arm
from dqsearch_tvm.target import host_target

from dqsearch.backends import BackendError, OptionRequired
from dqsearch.backends.testing import TINY_INPUT, check_measurement, conv_spec, tiny_model

KEY = "dqsearch-test"
FAST = {"repeats": 3, "min_repeats": 2, "budget_seconds": 0.2, "min_repeat_ms": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A TVM RPC process in its own process group: stopping it also stops the children that
    would otherwise keep holding its port."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "TVM_NUM_THREADS": "1"}
        self.p = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True, env=env)

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        try:  # children of the group that outlived the leader
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


def server_registered(tracker_port: int) -> bool:
    from tvm import rpc

    summary = rpc.connect_tracker("127.0.0.1", tracker_port).summary()
    return any(KEY in str(s.get("key", "")) for s in summary.get("server_info", []))


def start_server(tracker_port: int | None = None) -> tuple[Proc, int]:
    port = free_port()
    args = ["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)]
    if tracker_port is not None:
        args += ["--tracker", f"127.0.0.1:{tracker_port}", "--key", KEY]
    return Proc(*args), port


@pytest.fixture(scope="module")
def tracker() -> Iterator[int]:
    port = free_port()
    proc = Proc("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                str(port + 1))
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True, "RPC tracker")
        yield port
    finally:
        proc.stop()


@pytest.fixture
def server(tracker: int) -> Iterator[Proc]:
    proc, _ = start_server(tracker)
    try:
        wait_for(lambda: server_registered(tracker), "RPC server registration")
        yield proc
    finally:
        proc.stop()


def board(tracker: int, **kw):
    return arm(rpc_tracker=f"127.0.0.1:{tracker}", rpc_key=KEY, target=host_target(1), cc="host",
               **{**FAST, **kw})


def test_tvm_arm_needs_a_board() -> None:
    with pytest.raises(OptionRequired):
        arm()
    with pytest.raises(ValueError, match="rpc_key"):
        arm(rpc_tracker="127.0.0.1:9190", cc="host")


def test_layers_and_model_over_tracker(tracker: int, server: Proc) -> None:
    backend = board(tracker)
    for bits in (8, 16, 32):
        check_measurement(backend.profile_layer(conv_spec("l", 8, 16), bits), f"rpc layer at {bits}")
    model = tiny_model()
    from dqsearch.backends import trace_model

    names = trace_model(model, TINY_INPUT).names
    profile = {n: (8 if i % 2 else 32) for i, n in enumerate(names)}
    check_measurement(backend.profile_model(model, profile, TINY_INPUT), "rpc model")
    assert backend.metadata()["run"]["where"].startswith("tracker 127.0.0.1")


def test_direct_server_without_tracker() -> None:
    proc, port = start_server()
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True, "RPC server")
        backend = arm(rpc=f"127.0.0.1:{port}", target=host_target(1), cc="host", **FAST)
        check_measurement(backend.profile_layer(conv_spec("l", 8, 16, "deconv"), 8), "direct rpc")
    finally:
        proc.stop()


def test_lost_board_is_retried_then_reported(tracker: int, server: Proc) -> None:
    backend = board(tracker, rpc_retries=1, rpc_retry_wait=0.5)
    spec = conv_spec("l", 8, 16)
    first = backend.profile_layer(spec, 8)
    server.stop()  # the board goes away: the next measurement fails, is retried, then reported
    with pytest.raises(BackendError, match="rpc_server") as err:
        backend.profile_layer(spec, 32)
    assert "failed 2 times" in str(err.value)
    replacement, _ = start_server(tracker)  # a board comes back: a fresh session is used
    try:
        wait_for(lambda: server_registered(tracker), "RPC server registration")
        check_measurement(backend.profile_layer(spec, 32), "after reconnect")
    finally:
        replacement.stop()
    check_measurement(first, "kept")
    assert backend.device.failures, "failed attempts are recorded"


def test_tuning_over_rpc(tracker: int, server: Proc, tmp_path) -> None:
    """meta-schedule's RPC runner measures the candidates on the board (via the tracker)."""
    backend = board(tracker, tune_trials=1, population=8, tuning_db=str(tmp_path))
    check_measurement(backend.profile_layer(conv_spec("l", 16, 8), 8), "tuned over rpc")
    assert backend.tuner.tuned_seconds > 0 and not backend.untuned_kernels
    assert (backend.tuner.dir / "trials.json").is_file()


def test_board_killed_mid_profile_keeps_the_table_and_resumes(tracker: int, server: Proc, tmp_path) -> None:
    """The board dies during `dqsearch profile`: the retries fail, the run stops with a clear
    error, every layer measured so far is in the table file, and `--resume` finishes it."""
    import json

    from dqsearch.backends.profiling import profile_table

    out = tmp_path / "arm.json"
    backend = board(tracker, rpc_retries=1, rpc_retry_wait=0.5)
    measured = []
    real = backend.profile_layer

    def profile_layer_then_kill(spec, bits):
        result = real(spec, bits)
        measured.append((spec.name, bits))
        if len(measured) == 3:
            os.killpg(server.p.pid, signal.SIGKILL)  # the board dies after the third measurement
        return result

    backend.profile_layer = profile_layer_then_kill
    with pytest.raises(BackendError, match="failed 2 times"):
        profile_table(backend, tiny_model(), TINY_INPUT, (8, 32), out, progress=False)
    saved = json.loads(out.read_text())
    assert not saved["complete"]
    kept = {(name, int(b)) for name, layer in saved["layers"].items() for b in layer["latency"]}
    assert {(n, b) for n, b in measured[:3]} <= kept, "measurements before the failure are lost"

    replacement, _ = start_server(tracker)
    try:
        wait_for(lambda: server_registered(tracker), "RPC server registration")
        table = profile_table(board(tracker), tiny_model(), TINY_INPUT, (8, 32), out, resume=True,
                              progress=False)
    finally:
        replacement.stop()
    done = json.loads(out.read_text())
    assert done["complete"] and set(done["layers"]) == set(table.layers)
    assert all(set(layer["latency"]) == {"8", "32"} for layer in done["layers"].values())
    for name, b in measured[:3]:  # resumed, not re-measured
        assert done["layers"][name]["latency"][str(b)] == saved["layers"][name]["latency"][str(b)]
