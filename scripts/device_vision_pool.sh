#!/bin/bash
# One GPU call (2026-11-27, seventh session): (1) dense-200k fine-tuned at 8K-64K tokens with its log-n length
# scale on and PoSE jumps to 204,800; (2) msa-tiny's vision with batches drawn by worker processes
# (--data-workers) and image-QA kinds weighted separately, with and without a per-patch conv stem. Then the
# quick evals (NIAH, 100 GUI screens and 100 image questions, seed 12345) and dense-200k at 204,752 tokens on
# 20 held-out questions (seed 1).
#   bash scripts/device_vision_pool.sh      (needs .ck_v64/ in carry: the v64 run of device_vision.sh)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0
V="--init-from .ck_v64 --seq-start 1024 --seq-end 4096 --lr 5e-4 --warmup-steps 10 --pose-prob 0.3 --dense-warmup 0"
V="$V --max-examples 512 --data-workers 5"
MIX="image_qa:2,image_qa_shape:1,image_qa_count:1,image_qa_word:1,image_colour:0.3,gui:1.5,niah_single:0.8"
MIX="$MIX,niah_multi_query:0.3,copy:0.2"
D="--init-from data/checkpoints --seq-start 8192 --seq-end 65536 --tokens-per-step 131072 --lr 3e-4"
D="$D --warmup-steps 10 --pose-prob 0.5 --dense-warmup 0 --data-workers 3"
D="$D --tasks niah_single:2,niah_multi_query:1.5,niah_multi_key:1,niah_multi_value:0.5,variable_tracking:0.5,image_qa:0.3,gui:0.3"
JOBS="d|dense-200k|$D;a|msa-tiny|$V --tasks $MIX;s|msa-tiny|$V --patch-stem 32 --tasks $MIX"
TRAIN_MIN=${TRAIN_MIN:-6.0} EVAL_LENGTHS=4096,131072 EVAL_S=${EVAL_S:-110} N_VISION=100 JOBS="$JOBS" \
  bash scripts/device_sweep.sh
echo "== dense-200k (d) at 204,752, seed 1"
timeout 80 python scripts/quick_eval.py --checkpoint-dir /tmp/sw/d --models dense-200k --lengths 204752 \
  --depths 0,0.25,0.5,0.75,1 --n 4 --seed 1 --n-vision 0 --out /tmp/sw/d/niah-204752-seed1.json 2>&1 | tail -n 2
tar czf "$OUT/sweep.tgz" -C /tmp/sw --exclude '*.safetensors' --exclude '*.pt' .
ls -la "$OUT"
