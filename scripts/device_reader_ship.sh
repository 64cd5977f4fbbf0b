#!/bin/bash
# One GPU call (fourteenth session): the reader's full stage goes on from a returned candidate, then the shipping
# eval of the result (scripts/device_ship.sh: msa-tiny's NIAH to 1M, recall, GUI, image QA, with the migration
# measurements beside it on the card), so the weights that ship are the ones measured.
#   INIT=.ck_r1/f bash scripts/device_reader_ship.sh     (carry the candidate's msa-tiny.{safetensors,json} and
#                                                           msa-tiny.patch_heads.safetensors)
# F_MIN (default 3.0) and LR (default 2e-4: a continuation, not a fresh start) pass through to device_reader.sh.
set -u
: "${INIT:?name the candidate folder, e.g. INIT=.ck_r1/f}"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/rd  # device_reader.sh's work folder
PART=2 F_MIN=${F_MIN:-3.0} LR=${LR:-2e-4} bash scripts/device_reader.sh > "$OUT/train.txt" 2>&1
tail -n 9 "$OUT/train.txt"
[ -f $W/f/msa-tiny.safetensors ] || { echo "the full stage wrote no weights"; exit 1; }
cp $W/f/msa-tiny.safetensors $W/f/msa-tiny.json data/checkpoints/
EVAL_MODELS=msa-tiny MIG_PARALLEL=1 NB_S=0 GPU_TESTS=0 EVAL_S=${EVAL_S:-270} MIG_S=${MIG_S:-120} bash scripts/device_ship.sh
