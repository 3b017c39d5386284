"""CLI commands of the build stage (placeholder until the stage lands)."""

from __future__ import annotations
