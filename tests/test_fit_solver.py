"""Fit solver: fills the budget, ffn_down one step above gate/up, writes a variant the planner agrees with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from quantforge.cli import main

DATA = Path(__file__).parent / "data" / "fit"


def test_fit_writes_a_variant_that_fits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r1.toml"
    shutil.copy(DATA / "deepseek-r1-0528.toml", recipe)
    assert main(["fit", str(recipe), "--target", "256gb-24gb", "--ctx", "32768", "--write", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["report"]["verdict"] == "fits"
    ladder = ["iq1_s_r4", "iq2_k_r4", "iq3_k_r4", "iq4_ks_r4", "iq5_ks_r4", "q8_0"]
    by_layers: dict[str, dict[str, str]] = {}
    for r in res["rules"]:
        by_layers.setdefault(r["layers"], {})[r["match"]] = r["type"]
    for types in by_layers.values():
        assert ladder.index(types["ffn_down_exps"]) == ladder.index(types["ffn_(gate|up)_exps"]) + 1
    # the budget is filled: less than one ladder step of one layer left on the tightest device
    assert 0 <= res["headroom_bytes"] < 2 << 30
    # the written variant, planned again from the file, fits with the same weights
    assert (
        main(
            [
                "plan",
                str(recipe),
                "--quant",
                "FIT-256gb-24gb",
                "--target",
                "256gb-24gb",
                "--ctx",
                "32768",
                "--json",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert rep["verdict"] == "fits" and rep["weights_bytes"] == res["weights_bytes"]
    assert "# quantforge fit: FIT-256gb-24gb fills 256gb-24gb" in recipe.read_text()


def test_fit_with_sensitivity_raises_sensitive_layers_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "kld.csv"
    csv.write_text(
        "tensor,kld\n"
        + "".join(f"blk.{i}.ffn_down_exps.weight,{1.0 if i >= 50 else 0.01}\n" for i in range(3, 61))
    )
    assert main(["fit", str(DATA / "deepseek-r1-0528.toml"), "--target", "256gb-24gb", "--ctx", "8192",
                 "--sensitivity", str(csv), "--json"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    levels = {int(k): v for k, v in res["levels"].items()}
    ladder = ["iq1_s_r4", "iq2_k_r4", "iq3_k_r4", "iq4_ks_r4", "iq5_ks_r4", "q8_0"]
    idx = {k: ladder.index(v) for k, v in levels.items()}
    # the sensitive layers (50-60) sit at the top level; some insensitive layer is below them
    assert all(idx[k] == max(idx.values()) for k in range(50, 61))
    assert min(idx.values()) < max(idx.values())


def test_fit_bad_sensitivity_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "fit",
                str(DATA / "deepseek-r1-0528.toml"),
                "--target",
                "256gb-24gb",
                "--sensitivity",
                "nope.csv",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.csv: no such sensitivity file" in err[0]
