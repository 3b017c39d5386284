"""The planner against the recorded H100 loads, as the Markdown table of docs/memory-validation.md.

Reads the run table ``docs/gpu-logs/runs.tsv`` (log stem, model, exact command) and each run's
``llama-sweep-bench`` log next to it, regenerates the two model files the runs loaded
(byte-identical, cached under ``.qf-cache/gpu-validation/``) and prints, per logged buffer,
the prediction of ``quantforge.fit`` and the difference.

Usage: python bench/gpu_compare.py [LOG_DIR]   (default: docs/gpu-logs)
Exit status 1 when a buffer misses the acceptance (weights/KV exact, compute within 5 % or 64 MiB).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantforge.fit.validate import (  # noqa: E402
    compare_log,
    device_line,
    load_runs,
    make_gpu_models,
    markdown_table,
    model_facts,
)


def main(argv: list[str]) -> int:
    logs = Path(argv[0]) if argv else REPO / "docs" / "gpu-logs"
    import ik_llama_cpp

    models = make_gpu_models(
        REPO / ".qf-cache" / "gpu-validation",
        smol_f16=REPO / ".qf-cache" / "smol-f16.gguf",
        imatrix=REPO.parent / "shared" / "fixtures" / "ik" / "smol.imatrix",
        quantize=Path(ik_llama_cpp.__file__).parent / "bin" / "llama-quantize",
    )
    facts = {name: model_facts(p) for name, p in models.items()}
    rows = []
    for run in load_runs(logs / "runs.tsv"):
        rows += compare_log(facts[run.model], run, (logs / f"{run.name}.log").read_text(errors="replace"))
    smi = logs / "nvidia-smi.log"
    if smi.is_file():
        print(f"Device: {device_line(smi.read_text())}\n")
    print(markdown_table(rows))
    ok = all(r.ok for r in rows)
    rw = logs / "realwidth"
    if rw.is_dir():  # the real-width H200 grid, both engines (docs/memory-validation.md)
        from quantforge.fit.validate import realwidth_rows

        rrows = realwidth_rows(rw)
        if (rw / "device.txt").is_file():
            print(f"\nReal-width grid, device: {device_line((rw / 'device.txt').read_text())}\n")
        print(markdown_table([r for _s, _e, r in rrows]))
        for split in ("fit", "holdout"):
            sel = [r for s, _e, r in rrows if s == split]
            print(f"\n{split}: {sum(r.ok for r in sel)} of {len(sel)} buffers within the acceptance, "
                  f"largest |diff| {max(abs(r.diff_mib) for r in sel):.2f} MiB")
        ok = ok and all(r.ok for _s, _e, r in rrows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
