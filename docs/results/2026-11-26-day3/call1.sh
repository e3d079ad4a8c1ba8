#!/usr/bin/env bash
# Device call 1: the int4 GEMV on CUDA (tests), its kernel timings against main's kernels, and
# batch-1 decode of main's tree (.snapM) and this one, int4 and layered.
set -u
export PYTHONPATH=python_backend
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 200 python3 -m pytest -q -x tests/kernels/test_quant_matmul.py tests/kernels/test_pdl.py 2>&1 | tail -4
timeout 260 python3 benchmarks/kernel_bench.py --skip attention,checks --formats int4 --rows 1,2 \
  --shapes qkv,o,gate_up,down,qkv05,o05,gate_up05,down05 \
  --baseline .snapM/python_backend/qwen_triton/kernels/quant_matmul.py --out "$OUT/kb.json" > "$OUT/kb.log" 2>&1
grep "^linear" "$OUT/kb.log"; tail -3 "$OUT/kb.log"
for dir in .snapM .; do
  (cd "$dir" && timeout 150 python3 benchmarks/pdl_bench.py --tokenizer .carry/tokenizer --settings 1 --rounds 1 \
     --shapes 7b,0.5b --formats int4,layered --out /tmp/ab.json 2>&1 | grep "PDL=1" | sed "s|^|$dir |")
done
