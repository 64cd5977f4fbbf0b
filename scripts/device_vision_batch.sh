#!/bin/bash
# One GPU call (2026-11-27, sixth session): more image-QA examples per step (the mix's vision steps were
# 32 examples of ~100 tokens: the GPU sat on launch overhead and saw no more questions than the CPU probe),
# three recipes side by side; next to them, dense-200k's full eval with its log-n length scale and the GPU
# tests (correctness only: the eval's seconds are not timings while training shares the card).
#   bash scripts/device_vision_batch.sh      (needs .ck_v64/ in carry: the v64 run of device_vision.sh)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0
mkdir -p /tmp/side/eval
( timeout ${EVAL_S:-420} python -m msa_lab.eval --model dense-200k --out-dir /tmp/side/eval > /tmp/side/eval.txt 2>&1 ) &
( timeout 300 python -m pytest -q -m gpu tests/gpu -p no:cacheprovider > /tmp/side/gpu_tests.txt 2>&1 ) &
S="--seq-start 1024 --seq-end 4096 --lr 5e-4 --warmup-steps 10 --pose-prob 0.3 --dense-warmup 0"
MIX="image_qa:4,image_colour:0.5,gui:1,niah_single:1,niah_multi_query:0.5,copy:0.3"
JOBS="a|msa-tiny|--init-from .ck_v64 $S --max-examples 256 --tasks $MIX"
JOBS="$JOBS;b|msa-tiny|--init-from .ck_v64 $S --max-examples 512 --tasks image_qa:6,gui:0.5,niah_single:1,niah_multi_query:0.3"
JOBS="$JOBS;c|msa-tiny|--init-from data/checkpoints $S --max-examples 256 --tasks $MIX"
TRAIN_MIN=${TRAIN_MIN:-6.3} EVAL_LENGTHS=4096,131072 EVAL_S=90 JOBS="$JOBS" bash scripts/device_sweep.sh
wait
echo "== dense-200k eval"; tail -n 12 /tmp/side/eval.txt
echo "== GPU tests"; tail -n 5 /tmp/side/gpu_tests.txt
tar czf "$OUT/side.tgz" -C /tmp/side .
ls -la "$OUT"
