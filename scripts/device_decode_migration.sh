#!/bin/bash
# One GPU call (2026-11-27, sixth session), each step alone on the card:
#   1. decode at 1M for several indexer key splits (scripts/device_decode_tune.sh);
#   2. the migration measurements with dense-200k's log-n length scale (both models, past the limit);
#   3. dense-200k NIAH at 204,752 tokens on held-out questions (seed 1; the eval grid uses seed 0).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD
W=/tmp/dm; mkdir -p $W
{
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
OUT=$W bash scripts/device_decode_tune.sh
echo "== migration"; MSA_LAB_AUTOTUNE=0 timeout ${MIG_S:-170} python -m msa_lab.migration --lengths ${MIG_LENGTHS:-64K,204800,400000,1M} \
  --depths 0.1,0.5,0.9 --n 1 --time-budget $(( ${MIG_S:-170} - 30 )) --out $W/migration.json 2>&1 | tail -14
echo "== dense-200k at 204,752, seed 1"; MSA_LAB_AUTOTUNE=0 timeout ${PROBE_S:-110} python scripts/length_scale_probe.py \
  --bases 4096 --lengths 204752 --depths 0,0.25,0.5,0.75,1 --n ${PROBE_N:-3} --seed 1 --out $W/dense_204752_seed1.json 2>&1 | tail -3
} 2>&1 | tee $W/log.txt
tar czf "$OUT/dm.tgz" -C $W .
ls -la "$OUT"
