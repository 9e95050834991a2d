"""Two worker processes share one study (SQLite file, PostgreSQL server); one is SIGKILLed
mid-trial and its trial is retried: the study ends with exactly N finished trials, none lost or
counted twice.

A throw-away PostgreSQL cluster is started in a temp folder when the server binaries are installed
(`.ci/run` installs Debian's postgresql); DQSEARCH_TEST_POSTGRES_URL points at an existing server.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from dqsearch.study import StudyConfig, create_study, load_study

from .test_study import _config, family, table_path  # noqa: F401  (fixtures)


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A throw-away cluster: its URL, and a restart for the outage test."""

    def __init__(self, url: str, restart=None):
        self.url, self.restart = url, restart


@pytest.fixture(scope="module")
def postgres_server():
    if os.environ.get("DQSEARCH_TEST_POSTGRES_URL"):
        yield _Server(os.environ["DQSEARCH_TEST_POSTGRES_URL"])
        return
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="dqsearch-pg-"))  # pytest's tmp is private to root
    data = root / "data"
    sock = root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data.parent, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data.parent / "log"),
                    "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"

    def restart() -> None:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-m", "fast",
                        "-l", str(root / "log"), "-o", opts, "restart"], check=True, capture_output=True)

    try:
        yield _Server(f"postgresql://postgres@127.0.0.1:{port}/postgres", restart)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _worker(url: str, name: str, trials: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dqsearch.cli", "worker", "--study-name", name,
                             "--storage", url, "--trials", str(trials), "--threads", "1", "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'workers.db'}"
    return request.getfixturevalue("postgres_server").url


def test_killed_worker_trial_is_retried(storage_url, family, table_path, tmp_path):  # noqa: F811
    postgres_url = storage_url
    # The survivor notices the dead worker's trial only when it starts a trial after the grace
    # period: enough trials remain after the kill that it cannot finish them all within it.
    n = 8
    config: StudyConfig = _config(family, table_path, tmp_path, steps=40, measure=False,
                                  heartbeat_s=1, grace_s=3, max_retry=2)
    name = f"workers-{os.getpid()}-{time.time_ns()}"
    create_study(name, postgres_url, config)
    a, b = _worker(postgres_url, name, n), _worker(postgres_url, name, n)
    study, _ = load_study(name, postgres_url)
    deadline = time.time() + 120
    # both workers have a trial under way (a worker still importing torch when the other starts
    # would otherwise be killed with nothing to retry)
    while time.time() < deadline and len(study.get_trials(states=(TrialState.RUNNING,))) < 2:
        time.sleep(0.2)
    a.send_signal(signal.SIGKILL)
    a.wait()
    out, _ = b.communicate(timeout=600)
    assert b.returncode == 0, out
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == n, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING], "a killed trial was left running"
    assert len(failed) == 1, "exactly the killed worker's trial failed (stale heartbeat)"
    retried = [RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in complete]
    assert failed[0].number in retried, "its parameters came back as a retry and finished"
    assert len({t.number for t in complete}) == n
    optuna.delete_study(study_name=name, storage=postgres_url)


def test_postgres_restart_during_a_study_is_survived(postgres_server, family, table_path, tmp_path):  # noqa: F811
    if postgres_server.restart is None:
        pytest.skip("the server behind DQSEARCH_TEST_POSTGRES_URL is not ours to restart")
    url, n = postgres_server.url, 3
    config = _config(family, table_path, tmp_path, steps=40, measure=False, heartbeat_s=1, grace_s=4)
    name = f"restart-{os.getpid()}-{time.time_ns()}"
    create_study(name, url, config)
    worker = _worker(url, name, n)
    study, _ = load_study(name, url)
    deadline = time.time() + 300
    while time.time() < deadline and not study.get_trials(states=(TrialState.COMPLETE,)):
        time.sleep(0.3)
    time.sleep(0.5)  # the next trial is under way
    postgres_server.restart()
    out, _ = worker.communicate(timeout=600)
    assert worker.returncode == 0, out
    study, _ = load_study(name, url)
    trials = study.get_trials()
    states = [(t.number, t.state) for t in trials]
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == n, states
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    optuna.delete_study(study_name=name, storage=url)
