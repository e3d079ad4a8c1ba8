#!/usr/bin/env bash
# Several trees of this repository against each other on one GPU, in one device call: the changed
# kernels' tests and the correctness gate in each, then batch-1 decode (PDL on) from each tree in turn,
# round after round, so drift of the card shows as the spread between rounds.
#
# Each DIR is a snapshot made on the CPU machine and named in the device call's `carry`:
#   git archive <ref> | tar -x -C .snapX && ln -s ../.carry .snapX/.carry
# (an ignored folder travels only when `carry` names it; without that the call runs the working tree).
#
#   bash benchmarks/ab_trees.sh SHAPES FORMATS ROUNDS DIR...
#   bash benchmarks/ab_trees.sh 7b none,int8,fp8 2 .snapM .snapQ .snapG
set -u
shapes=$1 formats=$2 rounds=$3
shift 3
for dir in "$@"; do
  (cd "$dir" && PYTHONPATH=python_backend timeout 240 python3 -m pytest -q tests/kernels/test_pdl.py \
     tests/kernels/test_kernels_dense_gemv.py tests/kernels/test_quant_matmul.py 2>&1 | tail -1 | sed "s|^|$dir tests: |")
  (cd "$dir" && timeout 120 python3 benchmarks/gpu_bench.py --tokenizer .carry/tokenizer --shapes '' \
     --out /tmp/gate.json 2>&1 | grep "correctness gate" | sed "s|^|$dir |")
done
for round in $(seq "$rounds"); do
  for dir in "$@"; do
    (cd "$dir" && timeout 300 python3 benchmarks/pdl_bench.py --tokenizer .carry/tokenizer --settings 1 --rounds 1 \
       --shapes "$shapes" --formats "$formats" --out /tmp/ab.json 2>&1 | grep "PDL=1" | sed "s|^|round $round $dir |")
  done
done
