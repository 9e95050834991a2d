"""The commands a user types, end to end on real (tiny) models and the bundled images."""

import json

import pytest

from dqsearch.cli import main
from dqsearch.data import sample_images_dir
from dqsearch.models import load_checkpoint

TINY = ["--model", "bmshj2018-hyperprior", "--N", "16", "--M", "24", "--batch-size", "2",
        "--crop", "64", "--threads", "1", "--no-progress", "--data", str(sample_images_dir())]


@pytest.fixture(scope="module")
def fp32_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "fp.pt"
    assert main(["train", *TINY, "--steps", "3", "--lambda", "0.01", "-o", str(out)]) == 0
    return out


def test_train_fp32_then_qat(fp32_ckpt, tmp_path):
    ck = load_checkpoint(fp32_ckpt)
    assert ck.policy is None and ck.meta["steps"] == 3 and ck.meta["command"].startswith("dqsearch train")
    out = tmp_path / "dq.pt"
    assert main(["train", *TINY, "--checkpoint", str(fp32_ckpt), "--candidates", "6,8,10",
                 "--gamma", "0.01", "--steps", "2", "-o", str(out)]) == 0
    q = load_checkpoint(out)
    assert q.policy.bits == (6, 8, 10) and q.meta["init_model_id"] == ck.model_id


def test_existing_output_needs_resume_or_force(fp32_ckpt, capsys):
    assert main(["train", *TINY, "--steps", "3", "-o", str(fp32_ckpt)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", *TINY, "--steps", "3", "-o", str(fp32_ckpt), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_compress_decompress_eval_bdrate(fp32_ckpt, tmp_path, capsys):
    img = sample_images_dir() / "coffee.png"
    bits = tmp_path / "c.dqs"
    assert main(["compress", str(img), "-o", str(bits), "--checkpoint", str(fp32_ckpt)]) == 0
    assert "bpp" in capsys.readouterr().out
    png = tmp_path / "c.png"
    assert main(["decompress", str(bits), "-o", str(png), "--checkpoint", str(fp32_ckpt)]) == 0
    assert png.stat().st_size > 0
    res = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(fp32_ckpt), "--limit", "2", "--no-progress",
                 "-o", str(res)]) == 0
    data = json.loads(res.read_text())
    assert len(data["results"]["bpp"]) == 1
    assert main(["bd-rate", str(res), str(res)]) == 2  # one RD point: a clear error
    assert "at least two" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["compress", "missing.png", "-o", "x.dqs", "--checkpoint", "nope.pt"], "does not exist"),
    (["decompress", "missing.dqs", "-o", "x.png", "--checkpoint", "nope.pt"], "does not exist"),
    (["train", "-o", "x.pt", "--threads", "0"], "--threads"),
    (["eval", "--checkpoint", "embedded:9"], "embedded"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_corrupt_bitstream_is_refused(fp32_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.dqs"
    bad.write_bytes(b"DQSB\x01garbage")
    assert main(["decompress", str(bad), "-o", str(tmp_path / "o.png"), "--checkpoint", str(fp32_ckpt)]) == 2
    assert "corrupted" in capsys.readouterr().err


def test_default_model_round_trip_finds_the_embedded_checkpoint(tmp_path, capsys):
    img = sample_images_dir() / "astronaut.png"
    bits = tmp_path / "a.dqs"
    assert main(["compress", str(img), "-o", str(bits), "--threads", "1"]) == 0
    assert main(["decompress", str(bits), "-o", str(tmp_path / "a.png"), "--threads", "1"]) == 0
    from dqsearch.data import load_image
    from dqsearch.evaluate import psnr

    assert psnr(load_image(img), load_image(tmp_path / "a.png")) > 24


def test_diverged_training_is_one_clear_line(capsys, monkeypatch):
    """A loss that becomes inf/NaN ends the command with train's message, not a traceback."""
    import dqsearch.cli as cli_module

    def diverge(args):
        raise FloatingPointError("loss became inf at step 3; lower the learning rate")

    parser = cli_module.build_parser
    monkeypatch.setattr(cli_module, "build_parser", lambda: _with_func(parser(), "compare", diverge))
    code = cli_module.main(["compare", "studies/table1.toml"])
    err = capsys.readouterr().err
    assert code == 2 and "loss became inf at step 3" in err and "Traceback" not in err


def _with_func(parser, command, func):
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices[command].set_defaults(func=func)
    return parser


def test_command_table_nests_multi_word_commands():
    """Every command is one entry of the table; "study show" parses as a sub-command of "study"
    (no argv rewriting) and errors name the whole command."""
    from dqsearch import cli
    from dqsearch.cli_common import Command

    assert all(issubclass(c, Command) and c.name == n for n, c in cli.COMMANDS.items())
    parser = cli.build_parser()
    args = parser.parse_args(["study", "show", "s1", "-o", "x"])
    assert args.command == "study show" and args.study_name == "s1"
    assert args.func == cli.COMMANDS["study show"].run
    args = parser.parse_args(["study", "--target-latency", "20ms"])
    assert args.command == "study" and args.func == cli.COMMANDS["study"].run
    args = parser.parse_args(["latency", "validate", "t.json"])
    assert args.command == "latency validate"


def test_one_integer_list_parser():
    import argparse

    from dqsearch.cli_common import bit_sets, int_list

    assert int_list("6, 8,10") == (6, 8, 10)
    assert bit_sets("8,4,6;6,8,10") == [[4, 6, 8], [6, 8, 10]]
    with pytest.raises(argparse.ArgumentTypeError, match="sets like"):
        bit_sets("4,x")
