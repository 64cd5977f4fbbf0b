#!/bin/bash
# One GPU call (2026-11-28, eleventh session): msa-tiny reads its pictures at 64 px, where a GUI label is 1-2 px
# tall and a checkbox is one pixel. Two jobs side by side from the shipped msa-tiny (09fe8792), both with the new
# per-patch GUI label and window heads (msa_lab.train.PATCH_HEADS): the image side raised to 256 px (h256, 1,024
# patches) and to 128 px (h128, 256 patches), patch positions interpolated. Then the quick eval: NIAH at 4K,
# recall at k = 16 at 2K/4K/8K, and GUI and image QA on the eval seed 12345.
#   bash scripts/device_vision_hires.sh
set -u
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0
E="--init-from ${INIT:-data/checkpoints} --seq-start 2048 --seq-end 8192 --lr ${LR:-4e-4} --warmup-steps 20 --pose-prob 0.3"
E="$E --dense-warmup 0 --max-examples 512 --data-workers ${WORKERS:-7} --patch-aux-weight 1.0 --concentration-weight 3"
MIX="niah_single:0.6,niah_multi_query:0.3,niah_multi_key:0.2,variable_tracking:0.2,copy:0.3"
MIX="$MIX,image_qa:1,image_qa_count:0.4,image_qa_word:0.8,image_qa_shape:0.2,gui:2.5"
JOBS="h256|msa-tiny|$E --image-size 256 --tasks $MIX;h128|msa-tiny|$E --image-size 128 --tasks $MIX"
TRAIN_MIN=${TRAIN_MIN:-6.2} EVAL_LENGTHS=4096 EVAL_N=2 EVAL_S=${EVAL_S:-170} N_VISION=${N_VISION:-100} \
  RECALL=2048,4096,8192 JOBS="$JOBS" bash scripts/device_sweep.sh
