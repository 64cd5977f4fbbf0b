#!/bin/bash
# One GPU call (2026-11-27, tenth session): does training the main branch to keep its dense attention inside the
# indexer's 16 blocks (--concentration-weight, msa_lab.model.indexer.concentration_loss) raise indexer recall, and
# what does it cost the answers? Three jobs side by side from the shipped msa-tiny with the shipped recipe: weight
# 1 (k1), weight 3 (k3) and none (c, the control); then the quick eval (NIAH at 4K, recall at k = 16 at 2K/4K/8K).
# GUI and image QA are evaluated on the CPU afterwards (n = 100, the eval seed).
#   bash scripts/device_concentrate.sh
set -u
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0
E="--init-from ${INIT:-data/checkpoints} --seq-start 2048 --seq-end 8192 --lr ${LR:-2e-4} --warmup-steps 20 --pose-prob 0.3"
E="$E --dense-warmup 0 --max-examples 512 --data-workers ${WORKERS:-4} --patch-aux-weight 1.0"
MIX="niah_single:1,niah_multi_query:0.5,niah_multi_key:0.3,variable_tracking:0.3,copy:0.5"
MIX="$MIX,image_qa:1,image_qa_shape:0.5,image_qa_count:0.5,image_qa_word:0.5,gui:0.5"
JOBS="k1|msa-tiny|$E --concentration-weight 1 --tasks $MIX;k3|msa-tiny|$E --concentration-weight 3 --tasks $MIX"
JOBS="$JOBS;c|msa-tiny|$E --tasks $MIX"
TRAIN_MIN=${TRAIN_MIN:-6.6} EVAL_LENGTHS=4096 EVAL_N=2 EVAL_S=${EVAL_S:-110} N_VISION=0 \
  RECALL=2048,4096,8192 JOBS="$JOBS" bash scripts/device_sweep.sh
