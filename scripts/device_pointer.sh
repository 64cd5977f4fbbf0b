#!/bin/bash
# One GPU call (2026-11-28, eleventh session): the GUI pointer (msa_lab.model.pointer, --pointer-dim 64
# --pointer-weight 1) on top of the 256 px run of scripts/device_vision_hires.sh (h256, carried in .ck_hires/h256;
# at 128 px a 16 px label on an 800 px screen is 2-3 px tall, too small to read). Two jobs from h256: p256 with the
# vision mix, p256g with three times the GUI steps. Then the quick eval: NIAH at 4K, and GUI and image QA on the
# eval seed 12345 (100 each).
#   bash scripts/device_pointer.sh     (run with carry [".ck_hires/h256"]; two carried checkpoints pass the 64 MiB)
#   PART=2 TRAIN_MIN=4.8 EVAL_S=150 bash scripts/device_pointer.sh   (carry [".ck_pointer/p256g"]): p256g, continued
set -u
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0
E="--seq-start 2048 --seq-end 8192 --lr ${LR:-4e-4} --warmup-steps 20 --pose-prob 0.3"
E="$E --dense-warmup 0 --max-examples 512 --data-workers ${WORKERS:-7} --patch-aux-weight 1.0 --concentration-weight 3"
E="$E --pointer-dim 64 --pointer-weight 1"
MIX="niah_single:0.5,niah_multi_query:0.3,niah_multi_key:0.2,variable_tracking:0.2,copy:0.3"
JOBS="p256|msa-tiny|$E --init-from .ck_hires/h256 --tasks $MIX,image_qa:1,image_qa_count:0.4,image_qa_word:0.6,gui:3"
JOBS="$JOBS;p256g|msa-tiny|$E --init-from .ck_hires/h256 --tasks $MIX,image_qa:1,image_qa_count:0.4,image_qa_word:0.6,gui:9"
if [ "${PART:-1}" = 2 ]; then  # call 2: p256g continued alone (carry [".ck_pointer/p256g"]), 14 data workers
  E="${E/--data-workers 7/--data-workers 14}"
  JOBS="p256g2|msa-tiny|$E --init-from .ck_pointer/p256g --tasks $MIX,image_qa:1,image_qa_count:0.4,image_qa_word:0.6,gui:9"
fi
TRAIN_MIN=${TRAIN_MIN:-6.6} EVAL_LENGTHS=4096 EVAL_N=1 EVAL_S=${EVAL_S:-170} N_VISION=${N_VISION:-100} \
  JOBS="$JOBS" bash scripts/device_sweep.sh
