"""One output object for every command: human text or JSON, written at the CLI edge only."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from quantforge.units import human_bytes as human_bytes  # re-exported for cmd_fit, cmd_publish


def to_jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, (list, tuple)):
        return [to_jsonable(x) for x in data]
    if isinstance(data, dict):
        return {k: to_jsonable(v) for k, v in data.items()}
    return data


def emit(data: Any, *, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or through ``human`` (a renderer returning text)."""
    if as_json or human is None:
        sys.stdout.write(json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")
    else:
        text = human(data)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
