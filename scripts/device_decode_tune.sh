#!/bin/bash
# One GPU call: m3 decode at 1M (batch 1 and 8, one new token) for several indexer key splits
# (MSA_LAB_INDEXER_WAVES = programs per SM; fewer chunks = fewer top-k candidates to merge). Each setting is
# its own `msa-lab bench` process with its own dense baseline, so each file's ratios are same-run ratios.
#   WAVES="1 2 4" bash scripts/device_decode_tune.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MSA_LAB_AUTOTUNE=${MSA_LAB_AUTOTUNE:-0} PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for w in ${WAVES:-1 2 4}; do
  echo "== MSA_LAB_INDEXER_WAVES=$w"
  MSA_LAB_INDEXER_WAVES=$w timeout ${TUNE_S:-150} python -m msa_lab.bench --shapes m3 --lengths '' --decode-lengths 1M \
    --decode-batches 1,8 --decode-new-tokens 1 --memory-length 0 --tag "decode-waves$w" --out $OUT/decode_waves$w.json \
    --no-final-table 2>&1 | grep -E "msa_decode|dense_decode" | grep -v "_attn"
done
