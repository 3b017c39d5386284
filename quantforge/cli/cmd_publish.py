"""CLI commands of the publish stage (placeholder until the stage lands)."""

from __future__ import annotations
