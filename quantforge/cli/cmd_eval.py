"""CLI commands of the eval stage (placeholder until the stage lands)."""

from __future__ import annotations
