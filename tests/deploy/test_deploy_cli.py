"""`dqsearch export` and `compress/decompress --runtime` end to end, and their one-line errors."""

from __future__ import annotations

from dqsearch.cli import main
from dqsearch.data import save_image


def test_export_compress_decompress(tmp_path, mixed_checkpoint, image, capsys):
    png = tmp_path / "in.png"
    save_image(image, png)
    out = tmp_path / "dep"
    assert main(["export", "--checkpoint", str(mixed_checkpoint), "-o", str(out), "--subpixel", "on"]) == 0
    text = capsys.readouterr().out
    assert "packed model" in text and "paper FP32 x b/32" in text and "sub-pixel kept in h_s, g_s" in text
    assert main(["compress", str(png), "-o", str(tmp_path / "a.dqs"), "--runtime", str(out), "--timing"]) == 0
    text = capsys.readouterr().out
    assert "bpp" in text and "transform g_a" in text and "= entropy coding" in text
    assert main(["decompress", str(tmp_path / "a.dqs"), "-o", str(tmp_path / "a.png"),
                 "--runtime", str(out), "--timing"]) == 0
    assert (tmp_path / "a.png").is_file()
    table = capsys.readouterr().out
    for row in ("I/O: read input", "entropy coding (rANS)", "transform g_s", "entropy parameters (h_s)",
                "I/O: write output", "= transforms", "= total", "thread CPU ms"):
        assert row in table, row
    # integer entropy parameters (the default everywhere): PyTorch decodes the runtime's stream
    assert main(["decompress", str(tmp_path / "a.dqs"), "-o", str(tmp_path / "b.png"),
                 "--checkpoint", str(mixed_checkpoint)]) == 0
    # and the runtime decodes PyTorch's default stream
    assert main(["compress", str(png), "-o", str(tmp_path / "t.dqs"),
                 "--checkpoint", str(mixed_checkpoint)]) == 0
    assert main(["decompress", str(tmp_path / "t.dqs"), "-o", str(tmp_path / "t.png"),
                 "--runtime", str(out)]) == 0


def test_cli_errors_are_one_line(tmp_path, mixed_checkpoint, capsys):
    assert main(["export", "--checkpoint", str(mixed_checkpoint), "-o", str(tmp_path / "x"),
                 "--backend", "tvm-cpu"]) == 2
    err = capsys.readouterr().err
    assert "tvm-cpu" in err and "cannot deploy" in err and "backends that deploy: ort-cpu" in err
    assert err.count("\n") == 1
    assert main(["decompress", str(tmp_path / "none.dqs"), "-o", str(tmp_path / "o.png"),
                 "--runtime", str(tmp_path)]) == 2
    assert "none.dqs does not exist" in capsys.readouterr().err
