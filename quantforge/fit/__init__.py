"""The fit stage: hardware targets meet quant plans.

``plan_fit(plan, dims, target, settings=...)`` places every tensor (community policy + VRAM
fill), sizes every buffer (weights and KV exact, compute buffers from the engines' own graphs,
``fit/graphs.py``), gives the verdict, the largest context that fits, the run command with
ordered ``-ot`` arguments, R4 advice and a token-generation bound. ``fit.api.breakpoint_matrix``
runs it for variants x targets; ``fit.solver.solve_recipe`` (``quantforge.solve_fit``) chooses
types to fill a target's budget.
"""

from __future__ import annotations

from quantforge.fit.dims import ModelDims, dims_from_hparams
from quantforge.fit.kv import KVCache, kv_cache, padded_ctx
from quantforge.fit.report import DeviceUsage, Finding, FitReport, Settings, plan_fit

__all__ = [
    "DeviceUsage",
    "Finding",
    "FitReport",
    "KVCache",
    "ModelDims",
    "Settings",
    "dims_from_hparams",
    "kv_cache",
    "padded_ctx",
    "plan_fit",
]
