"""The knobs a speed result depends on, read from wherever a result states them, under one name each.

A sweep's numbers mean nothing without ``-ub``/``-b``, ``-rtr``, ``-fa``, ``-mla``, ``-amb``, ``-ot``,
the thread count and the model. Results state them in different ways: the command line
(``-ub 4096``, ``--ubatch-size 4096``), sweep-bench's ``main: n_kv_max = …, n_ubatch = …`` line,
ik's ``llama_new_context_with_model: mla_attn = 3`` log lines, llama-bench's markdown columns
(``n_ubatch``, ``fa``, ``mla``, ``amb``, ``rtr``, ``ot``) and JSON keys (``n_ubatch``, ``mla_attn``,
``attn_max_batch``, ``repack``, ``override_tensor``). Everything is mapped to one canonical name
and value spelling here, so two results can be compared knob by knob.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from quantforge.evaluate.models import SettingDifference

#: Canonical knobs in the order a report lists their differences: the ones that explain most
#: speed differences between two otherwise equal runs come first.
KNOB_ORDER = ("rtr", "ub", "b", "amb", "mla", "fa", "ot", "t", "tb", "ngl", "c", "ctk", "ctv", "fmoe",
              "ncmoe",
              "ser", "model")

#: Knobs that are on/off switches on the command line (absent = off).
SWITCHES = frozenset({"rtr", "fmoe"})

#: Command-line spellings (both engines) -> canonical knob.
FLAG_KNOB = {
    "-ub": "ub", "--ubatch-size": "ub",
    "-b": "b", "--batch-size": "b",
    "-amb": "amb", "--attention-max-batch": "amb",
    "-mla": "mla", "--mla-use": "mla",
    "-fa": "fa", "--flash-attn": "fa",
    "-ot": "ot", "--override-tensor": "ot",
    "-rtr": "rtr", "--run-time-repack": "rtr",
    "-t": "t", "--threads": "t",
    "-tb": "tb", "--threads-batch": "tb",
    "-ngl": "ngl", "--n-gpu-layers": "ngl", "--gpu-layers": "ngl",
    "-c": "c", "--ctx-size": "c",
    "-ctk": "ctk", "--cache-type-k": "ctk",
    "-ctv": "ctv", "--cache-type-v": "ctv",
    "-fmoe": "fmoe", "--fused-moe": "fmoe",
    "-ncmoe": "ncmoe", "--n-cpu-moe": "ncmoe",
    "-ser": "ser", "--smart-expert-reduction": "ser",
    "-m": "model", "--model": "model",
}
#: Flags that never take a value (the next word is another flag or a positional).
_NO_VALUE = frozenset({"-rtr", "--run-time-repack", "-fmoe", "--fused-moe"})
#: ``-fa`` is a switch in ik and older mainline, ``-fa on|off|auto`` in current mainline.
_OPTIONAL_VALUE = frozenset({"-fa", "--flash-attn"})
FA_VALUES = frozenset({"on", "off", "auto", "1", "0", "-1", "true", "false"})

#: llama-bench markdown column / JSON key -> canonical knob.
BENCH_FIELDS = {
    "n_batch": "b", "n_ubatch": "ub", "threads": "t", "n_threads": "t", "ngl": "ngl", "n_gpu_layers": "ngl",
    "fa": "fa", "flash_attn": "fa", "mla": "mla", "mla_attn": "mla", "amb": "amb", "attn_max_batch": "amb",
    "rtr": "rtr", "repack": "rtr", "fmoe": "fmoe", "fused_moe": "fmoe", "ot": "ot", "override_tensor": "ot",
    "tensor_buft_overrides": "ot", "type_k": "ctk", "type_v": "ctv", "n_cpu_moe": "ncmoe", "ser": "ser",
    "model_filename": "model",
}

#: ``main: n_kv_max = 4096, n_batch = 2048, …`` (sweep-bench, batched-bench) and ik's context log lines.
_MAIN_FIELDS = {"n_kv_max": "c", "n_batch": "b", "n_ubatch": "ub", "flash_attn": "fa", "n_gpu_layers": "ngl",
                "n_threads": "t", "n_threads_batch": "tb"}
_CTX_FIELDS = {"n_ctx": "c", "n_batch": "b", "n_ubatch": "ub", "flash_attn": "fa", "mla_attn": "mla",
               "attn_max_b": "amb", "fused_moe": "fmoe"}
_MAIN_LINE = re.compile(r"^\s*(?:main|llama_batched_bench):\s*(n_kv_max\s*=.*)$", re.M)
_CTX_LINE = re.compile(r"^\s*(?:=+\s*)?llama_(?:new_context_with_model|init_from_model):"
                       r"\s*(\w+)\s*=\s*(\S+)\s*$",
                       re.M)
_REPACKED = re.compile(r"=+\s*Repacked\s+(\d+)\s+tensors")
_LOAD_TENSORS = re.compile(r"^llm_load_tensors:", re.M)


def normalise(knob: str, value: object) -> str:
    """One spelling per value: switches and ``fa`` as on/off/auto, numbers without padding."""
    text = str(value).strip()
    low = text.lower()
    if knob == "fa":
        return {"1": "on", "true": "on", "on": "on", "": "on", "0": "off", "false": "off", "off": "off",
                "-1": "auto", "auto": "auto"}.get(low, text)
    if knob in SWITCHES:
        return {"1": "on", "true": "on", "on": "on", "": "on", "0": "off", "false": "off",
                "off": "off"}.get(low, text)
    if knob == "ot":
        return "none" if low in ("", "none") else text
    if knob == "model":
        return Path(text).name
    return text


def from_command(argv: Sequence[str]) -> dict[str, str]:
    """The knobs a command line sets; switches it lacks are ``off`` (their default in both engines)."""
    out: dict[str, str] = {}
    ots: list[str] = []
    i = 1 if argv and not argv[0].startswith("-") else 0
    while i < len(argv):
        a = argv[i]
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        knob = FLAG_KNOB.get(name)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if knob is None:
            i += 1
            continue
        if name in _NO_VALUE:
            out[knob] = "on"
            i += 1
        elif name in _OPTIONAL_VALUE and not eq:
            if nxt is not None and nxt.lower() in FA_VALUES:
                out[knob] = normalise(knob, nxt)
                i += 2
            else:
                out[knob] = "on"
                i += 1
        elif eq or nxt is not None:
            value = inline if eq else str(nxt)
            if knob == "ot":
                ots.append(value)  # repeatable: every -ot counts, in order
            else:
                out[knob] = normalise(knob, value)
            i += 1 if eq else 2
        else:
            i += 1
    if ots:
        out["ot"] = ",".join(ots)
    for knob in SWITCHES:
        out.setdefault(knob, "off")
    return out


def commands_in_text(text: str) -> list[list[str]]:
    """Command lines of the llama.cpp tools quoted in a pasted text (``\\`` continuations joined)."""
    joined = re.sub(r"\\\s*\n", " ", text)
    found: list[list[str]] = []
    for line in joined.splitlines():
        m = re.search(r"(\S*llama-(?:sweep-bench|bench|batched-bench|server|cli)\b.*)$", line)
        if not m or line.lstrip().startswith("|"):
            continue
        try:
            argv = shlex.split(m.group(1), comments=False)
        except ValueError:
            argv = m.group(1).split()
        if len(argv) > 1:
            found.append(argv)
    return found


def from_text(text: str) -> dict[str, str]:
    """Knobs stated in a tool log or a pasted report: the command, the ``main:`` line, ik's context lines."""
    out: dict[str, str] = {}
    for m in _CTX_LINE.finditer(text):
        knob = _CTX_FIELDS.get(m.group(1))
        if knob:
            out[knob] = normalise(knob, m.group(2))
    if _REPACKED.search(text):
        out["rtr"] = "on"
    elif _LOAD_TENSORS.search(text) and ("llama_new_context_with_model" in text
                                         or "llama_init_from_model" in text):
        out["rtr"] = "off"  # a whole load log without ik's "Repacked N tensors" line
    for m in _MAIN_LINE.finditer(text):
        for part in m.group(1).split(","):
            key, _, value = part.partition("=")
            knob = _MAIN_FIELDS.get(key.strip())
            if knob and value.strip():
                out[knob] = normalise(knob, value.strip())
    cmds = commands_in_text(text)
    if len(cmds) == 1:
        # an explicit command wins over what the log echoes; with several commands it is ambiguous
        out.update(from_command(cmds[0]))
    return out


def from_bench_fields(fields: Mapping[str, object]) -> dict[str, str]:
    """Knobs of one llama-bench result (markdown columns or JSON keys)."""
    out: dict[str, str] = {}
    for key, value in fields.items():
        knob = BENCH_FIELDS.get(key)
        if knob is None or value is None:
            continue
        text = str(value).strip()
        if knob == "mla" and text.lower() in ("false", "true"):
            text = "1" if text.lower() == "true" else "0"
        out[knob] = normalise(knob, text)
    return out


def differences(a: Mapping[str, str], b: Mapping[str, str], *,
                ignore: Iterable[str] = ()) -> tuple[SettingDifference, ...]:
    """Knobs whose values differ, in :data:`KNOB_ORDER` (a knob only one side states counts as differing)."""
    skip = set(ignore)
    keys = [k for k in KNOB_ORDER if k in a or k in b] + sorted((set(a) | set(b)) - set(KNOB_ORDER))
    out = []
    for k in keys:
        if k in skip:
            continue
        va, vb = a.get(k), b.get(k)
        if va != vb and not (va is None or vb is None):
            out.append(SettingDifference(knob=k, baseline=va, candidate=vb))
        elif (va is None) != (vb is None) and k in SWITCHES | {"ub", "b", "fa", "mla", "amb", "ot", "t"}:
            out.append(SettingDifference(knob=k, baseline=va, candidate=vb))
    return tuple(out)


def flags_of(knob: str) -> list[str]:
    """Every command-line spelling of a canonical knob, the short one first (``ub`` -> ``-ub``,
    ``--ubatch-size``)."""
    return [f for f, k in FLAG_KNOB.items() if k == knob]
