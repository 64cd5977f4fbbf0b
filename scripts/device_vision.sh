#!/bin/bash
# One GPU call (2026-11-27, sixth session): the vision recipe at three image sizes side by side, and
# dense-200k's log-n length scale probed to 204,800 tokens while they train.
#   phase 1: image_colour only (the image pathway forms; see data/train/probes/vision-2026-11-27/)
#   phase 2: image QA + GUI + video with NIAH and copy replay at 1-4K tokens (retrieval is kept)
# Each job warm-starts from the shipped msa-tiny; --image-size interpolates its patch positions.
#   VISION_P1=0.8 VISION_P2=6.4 SIZES="64 128 256" bash scripts/device_vision.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD
MIX=${MIX:-image_colour:1,image_qa:3,gui:3,video:0.5,niah_single:1,niah_multi_query:0.5,copy:0.3}
P1="--tasks image_colour:1 --seq-start 512 --seq-end 512 --tokens-per-step 16384 --max-examples 48 --lr 1e-3 --warmup-steps 5 --pose-prob 0 --dense-warmup 0 --minutes ${VISION_P1:-0.8}"
P2="--tasks $MIX --seq-start 1024 --seq-end 4096 --max-examples 32 --lr 7e-4 --warmup-steps 20 --pose-prob 0.3 --dense-warmup 0 --minutes ${VISION_P2:-6.4}"
JOBS=""
for s in ${SIZES:-64 128 256}; do
  JOBS="$JOBS${JOBS:+;}v$s|msa-tiny|--init-from ${INIT:-data/checkpoints} --image-size $s $P1 >> $P2"
done
if [ "${LENGTH_PROBE:-1}" = 1 ]; then
  python scripts/length_scale_probe.py --out "$OUT/length_scale.json" --bases ${BASES:-none,4096,8192,16384} \
    --lengths ${PROBE_LENGTHS:-16K,64K,128K,204752} > /tmp/length_scale.txt 2>&1 &
  PROBE=$!
fi
JOBS="$JOBS" EVAL_LENGTHS=${EVAL_LENGTHS:-4096,131072} EVAL_S=${EVAL_S:-90} bash scripts/device_sweep.sh
[ -n "${PROBE:-}" ] && { wait $PROBE; echo "== length scale probe"; cat /tmp/length_scale.txt | tail -8; }
