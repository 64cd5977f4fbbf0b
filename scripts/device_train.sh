#!/bin/bash
# One GPU call: train msa-tiny and dense-200k side by side (the small models leave the card
# half idle when alone), then a quick eval. Checkpoints, loss logs and the eval come back in $OUT.
#   TRAIN_MIN=7.5 bash scripts/device_train.sh
set -u
export PYTHONUNBUFFERED=1 MSA_LAB_AUTOTUNE=${MSA_LAB_AUTOTUNE:-0} OMP_NUM_THREADS=4
M=${TRAIN_MIN:-7.5}
EXTRA=${TRAIN_ARGS:-}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/tr
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
for m in msa-tiny dense-200k; do
  python -m msa_lab.train --model $m --minutes "$M" --no-progress --out-dir "$OUT" --log-dir /tmp/tr $EXTRA \
    > /tmp/tr/$m.stdout 2>&1 &
done
wait
rm -f "$OUT/README.md"
for m in msa-tiny dense-200k; do
  cp /tmp/tr/$m/log.jsonl "$OUT/$m.log.jsonl" 2>/dev/null
  echo "== $m"; tail -n 4 /tmp/tr/$m.stdout
  python - "$OUT/$m.log.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"steps {len(rows)} tokens {sum(r['tokens'] for r in rows):,} seconds {rows[-1]['seconds']:.0f}")
for r in rows[:: max(1, len(rows) // 12)] + rows[-1:]:
    print(f"  step {r['step']:5d} {r['phase']:6s} {r['task']:18s} n={r['seq_len']:5d} lm {r['lm_loss']:.3f} "
          f"kl {r['kl']:.3f} tok/s {r['tokens_per_s']:.0f}")
PY
done
cat /tmp/tr/msa-tiny.stdout /tmp/tr/dense-200k.stdout > "$OUT/train.stdout.txt"
PYTHONPATH=. timeout ${EVAL_S:-90} python scripts/quick_eval.py --checkpoint-dir "$OUT" --out "$OUT/quick_eval.json" \
  --lengths ${EVAL_LENGTHS:-4096,16384,65536}
ls -la "$OUT"
