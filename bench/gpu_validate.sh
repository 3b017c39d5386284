#!/usr/bin/env bash
# Real GPU validation of the fit planner (run ON the lent GPU machine via the run tool).
#
#   here:   python bench/gpu_prepare.py          # -> .qf-cache/gpu-carry (ik source subset + smol8.gguf, ~47 MiB)
#   device: run(command="bash bench/gpu_validate.sh", carry=[".qf-cache/gpu-carry"], timeout_s=600)
#           (first call builds ik_llama.cpp with CUDA for sm_90 into .qf-cache/gpu-build; if the build
#            is cut by the time limit it exits 3: call again while the machine is warm, ninja resumes)
#   here:   copy the returned logs to docs/gpu-logs/ and run python bench/gpu_compare.py docs/gpu-logs
set -uo pipefail
C=.qf-cache/gpu-carry
B=.qf-cache/gpu-build
OUT=${OUT:-/tmp/qf-gpu-out}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.log" 2>&1 || true
if [ ! -x "$B/bin/llama-sweep-bench" ]; then
  cmake -S "$C/ik" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGGML_NCCL=OFF -DGGML_CUDA_FA_ALL_QUANTS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=ON > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 2; }
  timeout 520 cmake --build "$B" --target llama-sweep-bench -j "$(nproc)" > "$OUT/build.log" 2>&1
  if [ ! -x "$B/bin/llama-sweep-bench" ]; then tail -5 "$OUT/build.log"; echo "build not finished: call again"; exit 3; fi
fi
M=$C/smol8.gguf
sweep() {  # name, args...
  local name=$1; shift
  timeout 60 "$B/bin/llama-sweep-bench" -m "$M" -t 8 -ngl 99 "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?"
}
sweep full-c4096-ub512        -c 4096  -b 2048 -ub 512
sweep full-c16384-ub1024      -c 16384 -b 2048 -ub 1024
sweep hybrid-c4096-ub512      -c 4096  -b 2048 -ub 512  -ot "ffn_.*=CPU"
sweep hybrid-c4096-ub2048     -c 4096  -b 2048 -ub 2048 -ot "ffn_.*=CPU"
sweep planner-c8192-ub512     -c 8192  -b 2048 -ub 512  -ot '^blk\.(0|1|2|3)\.ffn_(up|gate|down)\.weight$=CUDA0' -ot '^blk\.[0-9]+\.ffn_(up|gate|down)\.weight$=CPU'
sweep q8kv-c8192-ub512        -c 8192  -b 2048 -ub 512  -ctk q8_0 -ctv q8_0
grep -h "buffer size\|KV self size\|n_ctx  \|n_ubatch" "$OUT"/*-ub*.log | head -80
