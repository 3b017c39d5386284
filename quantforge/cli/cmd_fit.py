"""CLI commands of the fit stage (placeholder until the stage lands)."""

from __future__ import annotations
