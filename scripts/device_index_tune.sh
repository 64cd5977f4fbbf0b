#!/bin/bash
# One GPU call (2026-11-27, eighth session): train only msa-tiny's index branch (--train-only index) by its KL
# toward the main branch's dense block mass, on text at 2K-8K tokens with 1,024 KL queries per step, from
# data/checkpoints; then the NIAH grid of the result, 4K to 1M at 5 depths (2 questions each). Recall is
# measured afterwards on the CPU (scripts/recall_probe.py), like the shipped figure.
#   bash scripts/device_index_tune.sh      ($OUT/msa-tiny.safetensors, msa-tiny.json, log.jsonl.gz, niah.json)
set -u
export PYTHONUNBUFFERED=1 MSA_LAB_AUTOTUNE=0 PYTHONPATH=$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/out}; W=/tmp/ix; mkdir -p $OUT $W
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python -m msa_lab.train --model msa-tiny --init-from data/checkpoints --train-only index \
  --tasks ${TASKS:-niah_single:1,niah_multi_query:0.5,copy:0.5} --seq-start ${SEQ0:-2048} --seq-end ${SEQ1:-8192} \
  --tokens-per-step 65536 --kl-queries ${KLQ:-1024} --lr ${LR:-1e-3} --warmup-steps 10 --dense-warmup 0 \
  --pose-prob 0.3 --data-workers 8 --minutes ${TRAIN_MIN:-4} --no-progress --out-dir $W --log-dir $W/logs > $W/train.txt 2>&1
tail -n 2 $W/train.txt
python - $W/logs/msa-tiny/log.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
q = max(1, len(rows) // 4)
for i in range(0, len(rows), q):
    seg = rows[i:i + q]
    print(f"steps {i + 1}-{i + len(seg)} n={seg[-1]['seq_len']} kl {sum(r['kl'] for r in seg) / len(seg):.4f} "
          f"lm {sum(r['lm_loss'] for r in seg) / len(seg):.3f}")
PY
timeout ${EVAL_S:-200} python scripts/quick_eval.py --checkpoint-dir $W --models msa-tiny --lengths 4K,16K,64K,256K,1M \
  --depths 0,0.25,0.5,0.75,1 --n 2 --n-vision 0 --out $OUT/niah.json 2>&1 | tail -n 2
cp $W/msa-tiny.safetensors $W/msa-tiny.json $OUT/
gzip -c $W/logs/msa-tiny/log.jsonl > $OUT/log.jsonl.gz
ls -la $OUT
