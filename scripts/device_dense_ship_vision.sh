#!/bin/bash
# One GPU call (2026-11-27, seventh session): the full eval of the new dense-200k in data/checkpoints (20
# questions per depth at 204,752 tokens) and the migration measurements past its limit, next to a 6-minute
# msa-tiny vision run with per-patch supervision (alone on the card this time: call 2's three jobs ran out
# of memory together). The eval's seconds are not timings (training shares the card).
#   bash scripts/device_dense_ship_vision.sh      (carry .ck_v64)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0 PYTHONUNBUFFERED=1
C=/tmp/c3; mkdir -p $C/eval
( timeout 300 python -m msa_lab.eval --model dense-200k --long-n 4 --out-dir $C/eval > $C/eval_dense.txt 2>&1
  timeout 150 python -m msa_lab.migration --lengths 64K,204800,400000,1M --depths 0.1,0.5,0.9 --n 1 \
    --time-budget 120 --out $C/migration.json > $C/migration.txt 2>&1 ) &
V="--init-from .ck_v64 --seq-start 1024 --seq-end 4096 --lr 5e-4 --warmup-steps 10 --pose-prob 0.3 --dense-warmup 0"
V="$V --max-examples 512 --data-workers 10 --patch-aux-weight 0.5"
MIX="image_qa:2,image_qa_shape:1,image_qa_count:1,image_qa_word:1,image_colour:0.3,gui:0.7,niah_single:0.8"
MIX="$MIX,niah_multi_query:0.3,copy:0.2"
TRAIN_MIN=${TRAIN_MIN:-6.2} EVAL_LENGTHS=4096,131072 EVAL_S=${EVAL_S:-150} N_VISION=60 \
  JOBS="v|msa-tiny|$V --tasks $MIX" bash scripts/device_sweep.sh
wait
echo "== dense-200k eval"; tail -n 15 $C/eval_dense.txt
echo "== migration"; tail -n 15 $C/migration.txt
tar czf "$OUT/c3.tgz" -C $C .
ls -la "$OUT"
