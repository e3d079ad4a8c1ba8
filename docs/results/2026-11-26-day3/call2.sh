#!/usr/bin/env bash
# Device call 2: the int4 GEMV routed to 0.5B's short layers: tests on CUDA, the correctness gate,
# kernel timings at one row against main's kernels, batch-1 decode of main (.snapM) and this tree.
set -u
export PYTHONPATH=python_backend
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 200 python3 -m pytest -q tests/kernels/test_quant_matmul.py tests/kernels/test_pdl.py \
  tests/kernels/test_kernels_dense_gemv.py 2>&1 | tail -3
timeout 150 python3 benchmarks/gpu_bench.py --tokenizer .carry/tokenizer --shapes '' --out /tmp/gate.json 2>&1 | grep -i "gate"
timeout 120 python3 benchmarks/kernel_bench.py --skip attention,checks,sweeps --formats int4 --rows 1 \
  --shapes qkv05,o05,gate_up05,down05,qkv,o --baseline .snapM/python_backend/qwen_triton/kernels/quant_matmul.py \
  --out "$OUT/kb2.json" > "$OUT/kb2.log" 2>&1
grep "^linear" "$OUT/kb2.log"
for round in 1 2; do
  for dir in .snapM .; do
    (cd "$dir" && timeout 150 python3 benchmarks/pdl_bench.py --tokenizer .carry/tokenizer --settings 1 --rounds 1 \
       --shapes 0.5b --formats int4,layered --out /tmp/ab.json 2>&1 | grep "PDL=1" | sed "s|^|round $round $dir |")
  done
done
for dir in .snapM .; do
  (cd "$dir" && timeout 150 python3 benchmarks/pdl_bench.py --tokenizer .carry/tokenizer --settings 1 --rounds 1 \
     --shapes 7b --formats int4 --out /tmp/ab.json 2>&1 | grep "PDL=1" | sed "s|^|$dir |")
done
