"""quantforge.units: the one size parser and the one byte formatter."""

from __future__ import annotations

import pytest

from quantforge import targets, units
from quantforge.cli import _output
from quantforge.cli._options import size_flag
from quantforge.errors import UsageError

GIB = 1 << 30


def test_parse_size_units() -> None:
    assert units.parse_size("24 GiB") == 24 * GIB
    assert units.parse_size("24GB") == 24 * 1000**3
    assert units.parse_size("1.5 TiB") == 1536 * GIB
    assert units.parse_size("512 B") == 512
    assert units.parse_size(123) == 123
    assert units.parse_size("25 GB/s", rate=True) == 25 * 1000**3


@pytest.mark.parametrize("text", ["24", "24 G", "24 GiB/s", "24 XB", "", "GiB", True, None, [1]])
def test_parse_size_requires_an_explicit_unit(text: object) -> None:
    with pytest.raises(ValueError):
        units.parse_size(text)


def test_parse_size_bare_for_command_line_flags() -> None:
    assert units.parse_size("50G", bare=True) == 50 * 1000**3
    assert units.parse_size("40M", bare=True) == 40 * 1000**2
    assert units.parse_size("40MiB", bare=True) == 40 << 20
    assert units.parse_size("500000000", bare=True) == 500_000_000
    assert units.parse_size("1.5T", bare=True) == 1_500_000_000_000
    # The CLI's size flags keep their contract: None passes, bad text is a usage error naming the flag.
    assert size_flag(None, "--min-free") is None
    assert size_flag("256M", "--min-free") == 256_000_000
    with pytest.raises(UsageError, match="bad size '50 parsecs'") as err:
        size_flag("50 parsecs", "--split-max")
    assert err.value.where == "--split-max"
    # targets keeps its rules: units required, bandwidths allowed.
    assert targets.parse_size("25 GB/s") == 25 * 1000**3
    with pytest.raises(ValueError):
        targets.parse_size("24")


def test_human_bytes_and_exact_size() -> None:
    assert units.human_bytes(0) == "0 B"
    assert units.human_bytes(1023) == "1023 B"
    assert units.human_bytes(1024) == "1.00 KiB"
    assert units.human_bytes(1_729_000_000) == "1.61 GiB"
    assert units.human_bytes(5 * (1 << 50)) == "5120.00 TiB"
    assert _output.human_bytes is units.human_bytes
    assert units.exact_size(24 * GIB) == "24 GiB"
    assert units.exact_size(1536 << 20) == "1536 MiB"
    assert units.exact_size(1000) is None
    for n in (24 * GIB, 3 << 10, 7 << 20):
        assert units.parse_size(units.exact_size(n)) == n
