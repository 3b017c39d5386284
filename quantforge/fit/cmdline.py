"""What a ``llama-server`` / ``llama-cli`` / ``llama-sweep-bench`` / ``llama-bench``-style command line
asks the engine to allocate: the flags that size buffers, with each engine's defaults.

``parse_command(argv, engine=...)`` reads both engines' spellings (``-fa on|off|auto`` and the old
valueless ``-fa``, ``-ot`` repeated or comma-joined, ``-ncmoe``/``--n-cpu-moe``/``-cmoe``, ``-ts``
with ``,`` or ``/``, ``-sm``, ``-mla``/``-amb``/``-rtr``/``-no-fmoe`` (ik), ``-fit`` (mainline)).
Flags that do not change memory are kept as they are and otherwise ignored; an unknown flag is
not an error here (the engine's own parser decides that: ``quantforge.fit.command`` checks emitted
commands against the binary's ``--help``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine
from quantforge.errors import UsageError

#: flags that take a value, in both engines' long and short spellings (the value is skipped when
#: it is not one the planner reads)
_VALUE_FLAGS = frozenset(
    """-m --model -c --ctx-size -b --batch-size -ub --ubatch-size -ngl --gpu-layers --n-gpu-layers -ot
    --override-tensor -ts --tensor-split -sm --split-mode -mg --main-gpu -ctk --cache-type-k -ctv --cache-type-v
    -mla --mla-use -amb --attention-max-batch -t --threads -tb --threads-batch -ncmoe --n-cpu-moe -n --n-predict
    -p --prompt -np --parallel --host --port -a --alias -fit --fit -fitt --fit-target -fitc --fit-ctx -cuda
    --cuda-params -op --offload-policy -ger -nrep --n-repetitions -npp -ntg -npl -r --repetitions -pg -d
    --n-depth -lv --verbosity --log-verbosity -fa --flash-attn -gfm --gpu-fit-margin -dev --device -md
    --model-draft --chat-template -f --file --ctx-size-draft -cd""".split()
)


class RunCommand(BaseModel):
    """The memory-relevant settings of one command line (``None``: the engine's default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str
    engine: Engine
    model: str | None = None
    n_ctx: int | None = None  # None/0: the model's training context
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: bool = True  # ik: on by default; mainline: "auto" turns it on for CUDA runs
    mla: int = 3  # ik, MLA models
    amb: int = 256  # ik common default for -amb
    type_k: str = "f16"
    type_v: str = "f16"
    n_gpu_layers: int | None = None  # None: all (ik: 999 with a GPU; mainline: auto, with -fit off: all)
    overrides: tuple[tuple[str, str], ...] = ()  # (pattern, buffer name) in order
    tensor_split: tuple[float, ...] = ()
    split_mode: Literal["layer", "row", "graph", "attn", "tensor", "none"] = "layer"
    main_gpu: int = 0
    n_cpu_moe: int = 0  # ik -ncmoe (the LAST n layers' experts to the CPU); mainline --n-cpu-moe (the FIRST n)
    run_time_repack: bool = False  # ik -rtr: CPU tensors repacked to _r4/_r8 (their ops then stay on the CPU)
    no_mmap: bool = False
    no_kv_offload: bool = False
    fused_moe: bool = True  # ik -no-fmoe turns it off
    fit: bool | None = None  # mainline -fit on|off (default on: adjusts what the command leaves unset)
    threads: int | None = None
    n_parallel: int = 1
    argv: tuple[str, ...] = ()

    @property
    def effective_ubatch(self) -> int:
        """llama.cpp clamps the u-batch to the batch."""
        return min(self.n_ubatch, self.n_batch)


def _int(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r}: not an integer", hint=f"e.g. {flag} 512") from None


def _bool_word(flag: str, value: str) -> bool | None:
    v = value.lower()
    if v in ("on", "1", "true", "enabled"):
        return True
    if v in ("off", "0", "false", "disabled"):
        return False
    if v == "auto":
        return None
    raise UsageError(f"{flag} {value!r}: expected on, off or auto", hint=f"{flag} on")


def split_command_line(text: str | Sequence[str]) -> list[str]:
    """A command given as one string (shell-quoted, with ``\\`` line continuations) or an argv."""
    if not isinstance(text, str):
        return list(text)
    joined = text.replace("\\\r\n", " ").replace("\\\n", " ")
    try:
        return shlex.split(joined)
    except ValueError as e:
        raise UsageError(f"--command: cannot split the command line ({e})", hint="check its quotes") from None


def parse_command(argv: str | Sequence[str], *, engine: Engine) -> RunCommand:
    """The settings of ``argv`` (program name first, or only the flags)."""
    args = split_command_line(argv)
    if not args:
        raise UsageError("--command is empty", hint="give the whole command, e.g. 'llama-server -m M.gguf -c 32768'")
    tool = "llama-server"
    if not args[0].startswith("-"):
        tool = args[0].rsplit("/", 1)[-1]
        args = args[1:]
    out: dict[str, object] = {"tool": tool, "engine": engine, "argv": tuple(args)}
    if engine == "mainline":
        out["amb"] = 0
    overrides: list[tuple[str, str]] = []
    i = 0

    def value() -> str:
        nonlocal i
        if i + 1 >= len(args):
            raise UsageError(f"{args[i]}: missing value", hint=f"{args[i]} VALUE")
        i += 1
        return args[i]

    while i < len(args):
        a = args[i]
        if a in ("-m", "--model"):
            out["model"] = value()
        elif a in ("-c", "--ctx-size"):
            out["n_ctx"] = _int(a, value())
        elif a in ("-b", "--batch-size"):
            out["n_batch"] = _int(a, value())
        elif a in ("-ub", "--ubatch-size"):
            out["n_ubatch"] = _int(a, value())
        elif a in ("-fa", "--flash-attn"):
            # valueless in older builds; a value (on|off|auto) in current ones
            if i + 1 < len(args) and not args[i + 1].startswith("-"):
                v = _bool_word(a, value())
                out["flash_attn"] = True if v is None else v
            else:
                out["flash_attn"] = True
        elif a in ("-no-fa", "--no-flash-attn"):
            out["flash_attn"] = False
        elif a in ("-mla", "--mla-use"):
            out["mla"] = _int(a, value())
        elif a in ("-amb", "--attention-max-batch"):
            amb = _int(a, value())
            out["amb"] = 128 if 0 < amb < 128 else amb  # ik raises -amb below 128 to 128
        elif a in ("-ctk", "--cache-type-k"):
            out["type_k"] = value()
        elif a in ("-ctv", "--cache-type-v"):
            out["type_v"] = value()
        elif a in ("-ngl", "--gpu-layers", "--n-gpu-layers"):
            ngl = value()
            out["n_gpu_layers"] = None if ngl in ("auto", "all") else _int(a, ngl)
        elif a in ("-ot", "--override-tensor"):
            for piece in value().split(","):
                pat, sep, buft = piece.rpartition("=")
                if not sep or not pat:
                    raise UsageError(f"-ot {piece!r}: expected PATTERN=BUFFER", hint="e.g. -ot exps=CPU")
                overrides.append((pat, buft))
        elif a in ("-ts", "--tensor-split"):
            raw = value().replace("/", ",")
            try:
                out["tensor_split"] = tuple(float(x) for x in raw.split(",") if x)
            except ValueError:
                raise UsageError(f"-ts {raw!r}: expected numbers separated by commas", hint="e.g. -ts 3,2") from None
        elif a in ("-sm", "--split-mode"):
            mode = value()
            if mode not in ("layer", "row", "graph", "attn", "tensor", "none"):
                raise UsageError(f"-sm {mode!r}: unknown split mode", hint="layer, row or graph (ik)")
            out["split_mode"] = mode
        elif a in ("-mg", "--main-gpu"):
            out["main_gpu"] = _int(a, value())
        elif a in ("-ncmoe", "--n-cpu-moe"):
            out["n_cpu_moe"] = _int(a, value())
        elif a in ("-cmoe", "--cpu-moe"):
            out["n_cpu_moe"] = 999
        elif a in ("-rtr", "--run-time-repack"):
            out["run_time_repack"] = True
            out["no_mmap"] = True
        elif a in ("--no-mmap", "-nommap"):
            out["no_mmap"] = True
        elif a in ("-nkvo", "--no-kv-offload"):
            out["no_kv_offload"] = True
        elif a in ("-no-fmoe", "--no-fused-moe"):
            out["fused_moe"] = False
        elif a in ("-fmoe", "--fused-moe"):
            out["fused_moe"] = True
        elif a in ("-fit", "--fit"):
            if engine == "ik":
                out["fit"] = True  # ik: a switch
            else:
                v = _bool_word(a, value())
                out["fit"] = True if v is None else v
        elif a in ("-t", "--threads"):
            out["threads"] = _int(a, value())
        elif a in ("-np", "--parallel"):
            out["n_parallel"] = _int(a, value())
        elif a in _VALUE_FLAGS:
            value()
        i += 1
    out["overrides"] = tuple(overrides)
    return RunCommand.model_validate(out)


_HELP_FLAG = re.compile(r"(?:^|[\s,])(-{1,2}[A-Za-z][\w-]*)")


def known_flags(help_text: str) -> frozenset[str]:
    """Every flag a binary's ``--help`` lists (the option column of each line: ``-ub, --ubatch-size N``)."""
    flags: set[str] = set()
    for line in help_text.splitlines():
        head = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0] if line.strip().startswith("-") else ""
        flags.update(m.group(1) for m in _HELP_FLAG.finditer(" " + head))
    return frozenset(flags)


def command_problems(argv: str | Sequence[str], help_text: str) -> list[str]:
    """What the binary's own parser would refuse or read otherwise in an emitted command: flags its
    ``--help`` does not list, a u-batch above the batch (clamped), ``-fa`` without its value."""
    args = split_command_line(argv)[1:]
    known = known_flags(help_text)
    out = [f"{a}: not a flag of this build" for a in args if a.startswith("-") and a not in known
           and not re.fullmatch(r"-?\d+(\.\d+)?", a)]  # fmt: skip
    for i, a in enumerate(args):
        if a in ("-fa", "--flash-attn") and (i + 1 >= len(args) or args[i + 1] not in ("on", "off", "auto")):
            out.append("-fa without on|off|auto: current builds read the next word as its value")
    b = args[args.index("-b") + 1] if "-b" in args else "2048"
    ub = args[args.index("-ub") + 1] if "-ub" in args else "512"
    if int(ub) > int(b):
        out.append(f"-ub {ub} above -b {b}: llama.cpp clamps the u-batch to the batch")
    return out
