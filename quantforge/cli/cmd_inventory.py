"""CLI commands of the inventory stage (placeholder until the stage lands)."""

from __future__ import annotations
