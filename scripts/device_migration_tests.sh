#!/bin/bash
# One GPU call (2026-11-27, seventh session): the migration measurements with the new dense-200k (every
# policy at 64K, 204,800, 400,000 and 1M tokens) and the GPU tests, one after the other (the migration's
# prefill seconds are timings: alone on the card).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0 PYTHONUNBUFFERED=1
C=/tmp/c4; mkdir -p $C
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 330 python -m msa_lab.migration --lengths 64K,204800,400000,1M --depths 0.1,0.5,0.9 --n 1 \
  --time-budget 280 --out $C/migration.json > $C/migration.txt 2>&1
echo "== migration rc $?"; tail -n 22 $C/migration.txt
timeout 200 python -m pytest -q -m gpu tests/gpu -p no:cacheprovider > $C/gpu_tests.txt 2>&1
echo "== GPU tests rc $?"; tail -n 5 $C/gpu_tests.txt
tar czf "$OUT/c4.tgz" -C $C .
