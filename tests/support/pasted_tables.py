"""Speed tables as users pasted them into public GitHub issues and pull requests, character for character.

Each constant is the text as it appears in the thread named above it (code fences, headings and
prose around a table included where they were part of the paste). They are data for the
table reader and ``sweep compare`` tests; the numbers are the reporters' own.
"""

# https://github.com/ikawrakow/ik_llama.cpp/pull/518 (ikawrakow, description): LlaMA-3.1-8B on a
# Ryzen-7950X, this PR vs mainline llama.cpp build 5635 — one run each, 5 depths.
PR518_IK = """Here a sweep-bench with this PR for LlaMA-3.1-8B on a Ryzen-7950X CPU

|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |
|-------|--------|--------|----------|----------|----------|----------|
|   512 |    128 |      0 |    1.733 |   295.36 |    8.239 |    15.54 |
|   512 |    128 |    512 |    1.805 |   283.62 |    8.398 |    15.24 |
|   512 |    128 |   1024 |    1.857 |   275.73 |    8.561 |    14.95 |
|   512 |    128 |   1536 |    1.905 |   268.74 |    8.430 |    15.18 |
|   512 |    128 |   2048 |    1.954 |   261.97 |    8.563 |    14.95 |
"""

PR518_MAINLINE = """I haven't done this for a while, but I think for this one worth looking at mainline `llama.cpp` (build: `5635 (3069e3169)`)

|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |
|-------|--------|--------|----------|----------|----------|----------|
|   512 |    128 |      0 |   18.261 |    28.04 |    7.933 |    16.14 |
|   512 |    128 |    512 |   18.708 |    27.37 |    8.335 |    15.36 |
|   512 |    128 |   1024 |   19.048 |    26.88 |    8.547 |    14.98 |
|   512 |    128 |   1536 |   19.480 |    26.28 |    8.739 |    14.65 |
|   512 |    128 |   2048 |   19.670 |    26.03 |    8.912 |    14.36 |

10X faster PP here!
"""

# https://github.com/ikawrakow/ik_llama.cpp/pull/602 (ubergarm): a markdown heading right above the table.
PR602_Q4_0 = """# Q4_0 7.925 GiB (4.609 BPW)
|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |
|-------|--------|--------|----------|----------|----------|----------|
|   512 |    128 |      0 |    2.271 |   225.48 |    5.670 |    22.57 |
|   512 |    128 |    512 |    2.352 |   217.69 |    5.884 |    21.75 |
|   512 |    128 |   1024 |    2.432 |   210.50 |    6.019 |    21.27 |
|   512 |    128 |   1536 |    2.510 |   203.97 |    6.182 |    20.71 |
|   512 |    128 |   2048 |    2.591 |   197.63 |    6.359 |    20.13 |
|   512 |    128 |   2560 |    2.672 |   191.60 |    6.375 |    20.08 |
|   512 |    128 |   3072 |    2.759 |   185.54 |    6.727 |    19.03 |
|   512 |    128 |   3584 |    2.837 |   180.47 |    6.911 |    18.52 |
|   512 |    128 |   4096 |    2.918 |   175.49 |    6.895 |    18.57 |
"""

# https://github.com/ikawrakow/ik_llama.cpp/pull/559 (ubergarm): the command (backslash continuations)
# in a fenced block, then a heading and a -ub 4096 -b 4096 table.
PR559_IQ4_K = """```bash
CUDA_VISIBLE_DEVICES="0" \\
    ./build/bin/llama-sweep-bench \\
        --model "$model" \\
        --ctx-size 20480 \\
        -ctk f16 -ctv f16 \\
        -fa \\
        -ngl 99 \\
        -ub 4096 -b 4096 \\
        --no-mmap \\
        --warmup-batch \\
        --threads 1
```

## IQ4_K PR559@3dbc8437 -ub 4096 -b 4096
|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |
|-------|--------|--------|----------|----------|----------|----------|
|  4096 |   1024 |      0 |    1.397 |  2931.10 |   16.804 |    60.94 |
|  4096 |   1024 |   4096 |    1.664 |  2461.65 |   19.088 |    53.65 |
|  4096 |   1024 |   8192 |    1.931 |  2121.11 |   21.343 |    47.98 |
|  4096 |   1024 |  12288 |    2.195 |  1865.99 |   23.547 |    43.49 |
|  4096 |   1024 |  16384 |    2.462 |  1663.59 |   25.710 |    39.83 |
"""

# https://github.com/ikawrakow/ik_llama.cpp/pull/1057 (ikawrakow): every line indented by one space.
PR1057_MAIN = """ |    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |
 |-------|--------|--------|----------|----------|----------|----------|
 |  2048 |    128 |      0 |    1.439 |  1423.64 |    3.152 |    40.60 |
 |  2048 |    128 |   2048 |    1.422 |  1440.46 |    3.136 |    40.82 |
 |  2048 |    128 |   4096 |    1.437 |  1424.76 |    3.243 |    39.47 |
 |  2048 |    128 |   6144 |    1.475 |  1388.76 |    3.406 |    37.58 |
 |  2048 |    128 |   8192 |    1.508 |  1358.03 |    3.290 |    38.90 |
 |  2048 |    128 |  10240 |    1.535 |  1334.14 |    3.536 |    36.20 |
 |  2048 |    128 |  12288 |    1.567 |  1307.15 |    3.475 |    36.84 |
 |  2048 |    128 |  14336 |    1.591 |  1287.28 |    3.394 |    37.72 |
 |  2048 |    128 |  16384 |    1.620 |  1263.95 |    3.452 |    37.08 |
 |  2048 |    128 |  18432 |    1.649 |  1242.34 |    3.503 |    36.54 |
 |  2048 |    128 |  20480 |    1.670 |  1226.40 |    3.497 |    36.60 |
 |  2048 |    128 |  22528 |    1.702 |  1203.01 |    3.535 |    36.21 |
 |  2048 |    128 |  24576 |    1.736 |  1179.75 |    3.603 |    35.53 |
 |  2048 |    128 |  26624 |    1.763 |  1161.60 |    3.605 |    35.51 |
 |  2048 |    128 |  28672 |    1.794 |  1141.68 |    3.681 |    34.77 |
 |  2048 |    128 |  30720 |    1.828 |  1120.58 |    3.743 |    34.20 |
"""

# https://github.com/ikawrakow/ik_llama.cpp/issues/523 (ciprianveg): a markdown table, then the same
# table copied from GitHub's rendered view (tab-separated, no pipes) — one depth each.
ISSUE523 = """hello, much better: origin/ik/iq_gemv_tweaks :)
|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |
|-------|--------|--------|----------|----------|----------|----------|
|  7168 |   1792 |      0 |   28.049 |   255.56 |  329.723 |     5.43 |

vs previous test on main:
PP\tTG\tN_KV\tT_PP s\tS_PP t/s\tT_TG s\tS_TG t/s
7168\t1792\t0\t28.007\t255.94\t414.487\t4.32
"""

# https://github.com/ikawrakow/ik_llama.cpp/issues/909 (magikRUKKOLA): sweep-bench's settings line
# and table inside a code fence.
ISSUE909 = """```
main: n_kv_max = 73728, n_batch = 8192, n_ubatch = 8192, flash_attn = 1, n_gpu_layers = 99, n_threads = 12, n_threads_batch = 12

|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |
|-------|--------|--------|----------|----------|----------|----------|
|  8192 |   2048 |      0 |   22.750 |   360.09 |  371.612 |     5.51 |
|  8192 |   2048 |   8192 |   27.226 |   300.89 |  398.527 |     5.14 |
|  8192 |   2048 |  16384 |   32.145 |   254.85 |  424.979 |     4.82 |
```
"""

# https://github.com/ggml-org/llama.cpp/issues/14642 (createthis): llama-batched-bench on Kimi-K2 with
# -ot exps=CPU -ub 4096 -b 4096.
ISSUE14642_BATCHED = """```bash
./build/bin/llama-batched-bench \\
    --model /data/Kimi-K2-Instruct-GGUF/UD-Q4_K_XL/Kimi-K2-Instruct-UD-Q4_K_XL-00001-of-00013.gguf \\
    --numa numactl \\
    --threads 32 \\
    --ctx-size 131072 \\
    --n-gpu-layers 62 \\
    -ot "blk\\.(3|4|5|6|7|8)\\.ffn_.*=CUDA0" \\
    -ot exps=CPU \\
    -ub 4096 -b 4096 \\
    --seed 3407 \\
    --temp 0.6 \\
    --min-p 0.01 \\
    --flash-attn \\
    -npp 4096 \\
    -ntg 1024 \\
    -npl 1

main: n_kv_max = 131072, n_batch = 4096, n_ubatch = 4096, flash_attn = 1, is_pp_shared = 0, n_gpu_layers = 62, n_threads = 32, n_threads_batch = 32

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|  4096 |   1024 |    1 |   5120 |   38.594 |   106.13 |   46.432 |    22.05 |   85.026 |    60.22 |
```
"""

# https://github.com/ikawrakow/ik_llama.cpp/issues/1258 (jagusztinl): Kimi-K2.5 on a 96-core ARM CPU,
# ik llama-bench (rows without a header, log lines between them) then mainline llama-bench.
ISSUE1258 = """```shell
../ik_llama.cpp/build/bin/llama-bench -m IQ4_NL/Kimi-K2.5-IQ4_NL-00001-of-00012.gguf
======================================= HAVE_FANCY_SIMD is NOT defined
| deepseek2 671B IQ4_NL - 4.5 bpw | 539.80 GiB |  1026.92 B | CPU        |      96 |         pp512 |     88.92 ± 1.87 |
===================================== llama_new_context_with_model: f16
| deepseek2 671B IQ4_NL - 4.5 bpw | 539.80 GiB |  1026.92 B | CPU        |      96 |         tg128 |      2.54 ± 0.01 |
build: 1ec12b8e (4180)

 ../llama.cpp/build/bin/llama-bench -m IQ4_NL/Kimi-K2.5-IQ4_NL-00001-of-00012.gguf
| model                          |       size |     params | backend    | threads |            test |                  t/s |
| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |
| deepseek2 671B IQ4_NL - 4.5 bpw | 539.29 GiB |  1026.41 B | CPU        |      96 |           pp512 |         50.72 ± 0.31 |
| deepseek2 671B IQ4_NL - 4.5 bpw | 539.29 GiB |  1026.41 B | CPU        |      96 |           tg128 |          8.07 ± 1.61 |
build: 22cae8321 (7951)
```
"""

# https://github.com/ikawrakow/ik_llama.cpp/issues/490 (nux): the first table of the report, with the
# command it came from (DeepSeek-V3 hybrid, -mla 2 -fa 1 -amb 512 -ot exps=CPU). (\x20: the trailing space
# of the first line, as posted.)
ISSUE490_FIRST = """start-bench.sh is:\x20
./build/bin/llama-bench -m /mnt/nvme/models/ubergarm/DeepSeek-V3-0324-GGUF/DeepSeek-V3-0324-IQ4_K_R4/DeepSeek-V3-0324-IQ4_K_R4-00001-of-00010.gguf -p 512 -t 32 -mla 2 -fa 1 -fmoe 1 -ngl 99 --override-tensor "exps=CPU" -amb 512

Relevant results.txt:

| model                          |       size |     params | backend    | ngl | fa | mla |   amb | fmoe |          test |              t/s |
| ------------------------------ | ---------: | ---------: | ---------- | --: | -: | --: | ----: | ---: | ------------: | ---------------: |
| deepseek2 671B IQ4_K_R4 - 4.5 bpw | 386.18 GiB |   672.05 B | CUDA       |  99 |  1 |   2 |   512 |    1 |         pp512 |     26.74 ± 0.05 |
| deepseek2 671B IQ4_K_R4 - 4.5 bpw | 386.18 GiB |   672.05 B | CUDA       |  99 |  1 |   2 |   512 |    1 |         tg128 |      4.80 ± 0.00 |

build: 09764678 (3715)
"""

# https://github.com/ggml-org/llama.cpp/issues/5986 (Azirine): old llama-bench output ("pp 32" test
# names), two models per table, the builds before and after a regression.
ISSUE5986 = """System: MacBook Pro w/ i5-1038NG7
./llama-bench -m model.gguf -p 32

| model                          |       size |     params | backend    |    threads | test       |              t/s |
| ------------------------------ | ---------: | ---------: | ---------- | ---------: | ---------- | ---------------: |
| llama 7B mostly Q4_0           |   3.56 GiB |     6.74 B | BLAS       |          4 | pp 32      |     11.19 ± 0.05 |
| llama 7B mostly Q5_K - Medium  |   4.78 GiB |     7.24 B | BLAS       |          4 | pp 32      |     11.60 ± 0.09 |

build: 9d5949f (1552)

| model                          |       size |     params | backend    |    threads | test       |              t/s |
| ------------------------------ | ---------: | ---------: | ---------- | ---------: | ---------- | ---------------: |
| llama 7B Q4_0                  |   3.56 GiB |     6.74 B | BLAS       |          4 | pp 32      |      7.48 ± 0.07 |
| llama 7B Q5_K - Medium         |   4.78 GiB |     7.24 B | BLAS       |          4 | pp 32      |      6.71 ± 0.11 |

build: bb6d00bb (2392)
"""
