"""CLI commands of the demo stage (placeholder until the stage lands)."""

from __future__ import annotations
