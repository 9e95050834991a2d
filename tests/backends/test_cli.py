"""`dqsearch profile`, `dqsearch backends`, `dqsearch latency validate`: outputs and one-line errors."""

from __future__ import annotations

import json

import pytest

from dqsearch import cli, cli_common

pytest.importorskip("dqsearch_sim")


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_backends_lists_installed_and_failures(capsys):
    code, out, _ = run(capsys, "backends")
    assert code == 0 and "sim-npu" in out and "int8: 6,8" in out
    assert "sim " in out and "--spec" in out
    code, out, _ = run(capsys, "backends", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["sim-npu"]["loaded"] and rows["sim-npu"]["capabilities"]["8"] == "int8"
    assert rows["sim-npu"]["deploys"] is False


def test_profile_resume_and_validate(capsys, tmp_path):
    out = tmp_path / "t.json"
    args = ["profile", "--backend", "sim-stripes", "--N", "8", "--M", "8", "--input", "64x64",
            "--bits", "4,8,32", "-o", str(out), "--no-progress"]
    code, stdout, err = run(capsys, *args)
    assert code == 0 and out.exists() and "14 layers" in stdout, err
    code, _, err = run(capsys, *args)
    assert code == 2 and "exists: pass --resume" in err and "Traceback" not in err
    code, stdout, _ = run(capsys, *args, "--resume")
    assert code == 0
    code, _, _ = run(capsys, *args, "--force")
    assert code == 0
    code, stdout, _ = run(capsys, "latency", "validate", str(out), "--samples", "5", "--no-progress",
                          "-o", str(tmp_path / "v.json"))
    assert code == 0 and "100.0% within ±10%" in stdout
    assert json.loads((tmp_path / "v.json").read_text())["samples"] == 5


def test_profile_with_a_device_file(capsys, tmp_path):
    from dqsearch_sim import shipped_specs

    spec = tmp_path / "mine.toml"
    spec.write_text(shipped_specs()["bitfusion"].read_text().replace('"sim-bitfusion"', '"my-fusion"'))
    out = tmp_path / "m.json"
    code, _, err = run(capsys, "profile", "--backend", "sim", "--spec", str(spec), "--N", "8", "--M", "8",
                       "--input", "64x64", "--bits", "2,8", "-o", str(out), "--no-progress")
    assert code == 0, err
    assert json.loads(out.read_text())["metadata"]["backend"] == "my-fusion"


@pytest.mark.parametrize("argv, message", [
    (["profile", "--backend", "nope", "-o", "x.json"], "unknown backend 'nope'"),
    (["profile", "--backend", "sim", "-o", "x.json"], "--spec"),
    (["profile", "--backend", "sim-npu", "--bits", "3", "-o", "x.json"], "cannot run 3-bit"),
    (["profile", "--backend", "sim-npu", "--input", "65x64", "--N", "8", "--M", "8", "-o", "x.json"],
     "divisible by 64"),
    (["profile", "--backend", "sim-npu", "--input", "big", "-o", "x.json"], "write HxW"),
    (["profile", "--backend", "sim-npu", "--option", "oops", "-o", "x.json"], "KEY=VALUE"),
    (["latency", "validate", "missing.json"], "does not exist"),
    (["profile", "--backend", "sim-npu", "--tune-trials", "4", "-o", "x.json"],
     "does not accept options ['tune_trials']"),
    (["profile", "--backend", "sim-npu", "--rpc-tracker", "h:9190", "--option", "rpc_tracker=g:1",
      "-o", "x.json"],
     "contradicts --option rpc_tracker=g:1"),
    (["profile", "--backend", "sim-npu", "--tune-trials", "-1", "-o", "x.json"], "0 or more"),
])
def test_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_validate_refuses_another_backend(capsys, tmp_path):
    out = tmp_path / "t.json"
    run(capsys, "profile", "--backend", "sim-npu", "--N", "8", "--M", "8", "--input", "64x64",
        "--bits", "8,32", "-o", str(out), "--no-progress")
    code, _, err = run(capsys, "latency", "validate", str(out), "--backend", "sim-stripes", "--samples", "2")
    assert code == 2 and "measured on sim-npu" in err


def test_tvm_shortcut_flags_become_backend_options():
    parser = cli.build_parser()
    args = parser.parse_args(["profile", "--backend", "tvm-arm", "--tune-trials", "16", "--rpc-tracker",
                              "10.0.0.2:9190", "--rpc-key", "rk3588", "--option", "rpc_timeout=60"])
    opts = cli_common.backend_options(args)
    assert opts["tune_trials"] == 16 and opts["rpc_tracker"] == "10.0.0.2:9190"
    assert opts["rpc_key"] == "rk3588" and opts["rpc_timeout"] == 60 and "rpc" not in opts
