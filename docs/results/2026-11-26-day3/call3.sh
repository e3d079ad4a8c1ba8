#!/usr/bin/env bash
# Device call 3: the full benchmark at this commit (issue 6's table) and the same load through
# tritonserver; GPU tests first.
set -u
export PYTHONPATH=python_backend
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader > "$OUT/gpu_tests.txt"
timeout 150 python3 -m pytest -q tests/kernels/test_quant_matmul.py tests/kernels/test_pdl.py tests/quant/test_gpu.py \
  2>&1 | tail -2 >> "$OUT/gpu_tests.txt"; cat "$OUT/gpu_tests.txt"
timeout 330 python3 benchmarks/gpu_bench.py --tokenizer .carry/tokenizer --shapes 0.5b,7b --out "$OUT/gpu_bench.json" \
  > "$OUT/gpu_bench_full.log" 2>&1
grep -v -i "warning\|loading weights\|writing model" "$OUT/gpu_bench_full.log" | tail -45
mkdir -p /tmp/server
SKIP_ENGINE=1 timeout 200 bash benchmarks/server_gpu_bench.sh /tmp/server > "$OUT/server_bench.log" 2>&1
tail -30 "$OUT/server_bench.log"
tar czf "$OUT/server.tgz" -C /tmp server
