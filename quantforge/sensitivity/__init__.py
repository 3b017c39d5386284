"""Measured sensitivity: what each tensor group costs in KLD at each candidate type.

``run_sensitivity`` measures it with the real engine (one group changed, everything else at the
base variant, KLD against the base's cached logits); ``read_table`` reads quantforge's own tables and
imports published ones (Thireus' ``kld_results.csv``, per-tensor ``tensor,kld`` rows) into the same
``SensitivityTable`` the fit solver reads.
"""

from __future__ import annotations

from quantforge.sensitivity.table import (
    InteractionCheck,
    SensitivityEntry,
    SensitivityGroup,
    SensitivityTable,
    read_table,
    write_table,
)

__all__ = [
    "InteractionCheck",
    "SensitivityEntry",
    "SensitivityGroup",
    "SensitivityTable",
    "read_table",
    "write_table",
]
