#!/bin/bash
# One GPU call (2026-11-27, ninth session): does a learned attention sink (--attention-sink 1, ModelConfig.attention_sink)
# concentrate msa-tiny's dense attention, and so raise indexer recall? Two jobs side by side from the same
# checkpoint with the same recipe, one with the sink (s) and one without (c, the control), then the quick eval
# with recall at k = 16 at 2K/4K/8K and the first block's share of the dense mass per layer.
#   INIT=.ck_g64 bash scripts/device_sink.sh      (carry the INIT folder)
set -u
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0
E="--init-from ${INIT:-data/checkpoints} --seq-start 2048 --seq-end 8192 --lr ${LR:-2e-4} --warmup-steps 20 --pose-prob 0.3"
E="$E --dense-warmup 0 --max-examples 512 --data-workers ${WORKERS:-7} --patch-aux-weight 1.0"
MIX="niah_single:1,niah_multi_query:0.5,niah_multi_key:0.3,variable_tracking:0.3,copy:0.5"
MIX="$MIX,image_qa:1,image_qa_shape:0.5,image_qa_count:0.5,image_qa_word:0.5,gui:0.5"
JOBS="s|msa-tiny|$E --attention-sink 1 --sink-lr-scale ${SINK_LR:-50} --tasks $MIX;c|msa-tiny|$E --tasks $MIX"
TRAIN_MIN=${TRAIN_MIN:-6.3} EVAL_LENGTHS=4096,131072 EVAL_N=2 EVAL_S=${EVAL_S:-130} N_VISION=${N_VISION:-60} \
  RECALL=2048,4096,8192 JOBS="$JOBS" bash scripts/device_sweep.sh
