"""The wheel carries what `pip install . && quantforge demo` needs: recipes, targets, data."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_recipes_targets_and_data(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO), "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("quantforge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for p in sorted(REPO.glob("recipes/*.toml")):
        assert f"quantforge/shipped_recipes/{p.name}" in names
    assert "quantforge/shipped_recipes/smollm2-135m.imatrix" in names
    for p in sorted(REPO.glob("hw_targets/*.toml")):
        assert f"quantforge/shipped_targets/{p.name}" in names
    assert "quantforge/data/demo-eval.txt" in names
    assert any(n.startswith("quantforge/data/models/") for n in names)
    # Installed from the wheel (not this checkout), the locators find the packaged folders.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from quantforge.shipped import recipes_dir, targets_dir\n"
        "from quantforge.targets import list_targets\n"
        "print(recipes_dir()); print(targets_dir()); print(len(list_targets()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
    ).stdout.split()
    assert out[0] == str(site / "quantforge" / "shipped_recipes")
    assert out[1] == str(site / "quantforge" / "shipped_targets")
    assert int(out[2]) == len(list(REPO.glob("hw_targets/*.toml")))
