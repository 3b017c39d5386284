"""CLI commands of the recipe stage (placeholder until the stage lands)."""

from __future__ import annotations
