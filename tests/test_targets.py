"""Hardware targets: TOML loading with units, shipped breakpoints, detection, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantforge.cli import main
from quantforge.targets import TARGETS_DIR, detect_target, list_targets, load_target, parse_size, target_toml

GIB = 1 << 30


def test_parse_size_units() -> None:
    assert parse_size("24 GiB") == 24 * GIB
    assert parse_size("24GB") == 24 * 1000**3
    assert parse_size("25 GB/s") == 25 * 1000**3
    assert parse_size("1.5 TiB") == 1536 * GIB
    assert parse_size(123) == 123
    with pytest.raises(ValueError):
        parse_size("24")


def test_shipped_targets_cover_the_named_breakpoints() -> None:
    ts = {t.name: t for t in list_targets()}
    assert len(ts) >= 10
    assert ts["cpu-368gb"].gpu == () and ts["cpu-368gb"].ram.total == 368 * GIB
    assert [g.vram for g in ts["32gb-16gb"].gpu] == [16 * GIB] and ts["32gb-16gb"].ram.total == 32 * GIB
    for name, ram in (("64gb-24gb", 64), ("128gb-24gb", 128), ("256gb-24gb", 256)):
        assert ts[name].ram.total == ram * GIB and [g.vram for g in ts[name].gpu] == [24 * GIB]
    assert [g.name for g in ts["256gb-3x24gb"].gpu] == ["RTX 3090"] * 3
    assert len(ts["512gb-4x24gb"].gpu) == 4 and ts["512gb-4x24gb"].ram.total == 512 * GIB
    assert len(ts["1tb-epyc-2x24gb"].gpu) == 2 and ts["1tb-epyc-2x24gb"].ram.total == 1024 * GIB
    rtx8000 = ts["2s-epyc-rtx8000"]
    assert (
        rtx8000.cpu.sockets == 2
        and rtx8000.gpu[0].vram == 48 * GIB
        and rtx8000.gpu[0].compute_capability == "7.5"
    )
    assert ts["mac-512gb-unified"].unified_memory and ts["mac-512gb-unified"].ram.total == 512 * GIB
    # a 3090 has 24 GiB = 24576 MiB
    assert ts["64gb-24gb"].gpu[0].vram == 24576 << 20


def test_detect_round_trips(tmp_path: Path) -> None:
    t = detect_target(name="here")
    assert t.ram.total > 0 and t.cpu.physical_cores >= 1
    p = tmp_path / "here.toml"
    p.write_text(target_toml(t))
    back = load_target(p)
    assert back.ram == t.ram and back.cpu == t.cpu and back.gpu == t.gpu


def test_cli_target_detect_list_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine.toml"
    assert main(["target", "detect", "-o", str(out), "--name", "mine"]) == 0
    assert load_target(out).name == "mine"
    assert main(["target", "detect", "-o", str(out)]) == 2
    assert "file exists" in capsys.readouterr().err
    assert main(["target", "list"]) == 0
    assert "256gb-3x24gb" in capsys.readouterr().out
    assert main(["target", "show", "256gb-24gb"]) == 0
    assert 'vram = "24 GiB"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\n[cpu]\nphysical_cores = 4\n', "ram: Field required"),
        ('name = "x"\n[ram]\ntotal = "-4 GiB"\n', "ram.total: cannot read '-4 GiB' as a size"),
        ('name = "x"\n[ram]\ntotal = -4\n', "ram.total: Input should be greater than 0"),
        ('name = "x"\n[ram]\ntotal = "64 GiB"\n[[gpu]]\nname = "RTX 3090"\n', "gpu.0.vram: Field required"),
        (
            'name = "x"\n[ram]\ntotal = "64 GiB"\n[[gpu]]\nname = "g"\nvram = "0 GiB"\n',
            "gpu.0.vram: Input should be greater than 0",
        ),
    ],
)
def test_bad_target_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    assert main(["target", "show", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"quantforge: error: {p}: {message}")


def test_unknown_target_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["target", "show", "no/such.toml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "quantforge: error: no/such.toml: no such target file (shipped targets: "
    )


def test_targets_dir_is_shipped() -> None:
    assert TARGETS_DIR.is_dir() and (TARGETS_DIR / "256gb-24gb.toml").is_file()
