#!/bin/bash
# One GPU call (2026-11-27, eighth session), on two GPUs: msa-tiny with a 2-layer vision encoder
# (--vision-layers 2), its per-patch labels on the encoder's output, from the sixth session's v64 (.ck_v64),
# at 64 px (job e64) and at 128 px (job e128). Then quick evals (NIAH 4K/131K, 60 GUI screens and 60 image
# questions, seed 12345: the figures of run v in data/train/probes/vision-aux-2026-11-27).
#   bash scripts/device_vision_encoder.sh      (carry .ck_v64)
# Call 2 continued e64 alone on one GPU (16 cores), 100 questions each in the quick eval:
#   INIT=.ck_e64 SIZES=64 TAG=f WORKERS=14 LR=4e-4 TRAIN_MIN=7.3 N_VISION=100 EVAL_S=150 \
#     bash scripts/device_vision_encoder.sh      (carry .ck_e64)
set -u
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0
E="--init-from ${INIT:-.ck_v64} --vision-layers 2 --seq-start 1024 --seq-end 4096 --lr ${LR:-5e-4} --warmup-steps 20"
E="$E --pose-prob 0.3 --dense-warmup 0 --max-examples 512 --data-workers ${WORKERS:-14} --patch-aux-weight ${AUX:-1.0}"
MIX="image_qa:2,image_qa_shape:1,image_qa_count:1,image_qa_word:1,image_colour:0.3,gui:${GUI:-1},niah_single:0.8"
MIX="$MIX,niah_multi_query:0.3,copy:0.2"
JOBS=""
for s in ${SIZES:-64 128}; do JOBS="$JOBS${JOBS:+;}${TAG:-e}$s|msa-tiny|$E --image-size $s --tasks $MIX"; done
TRAIN_MIN=${TRAIN_MIN:-7} EVAL_LENGTHS=4096,131072 EVAL_N=2 EVAL_S=${EVAL_S:-110} N_VISION=${N_VISION:-60} JOBS="$JOBS" \
  bash scripts/device_sweep.sh
