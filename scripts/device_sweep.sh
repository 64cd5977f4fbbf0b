#!/bin/bash
# One GPU call: several training recipes side by side (the small models leave an H100 mostly idle when
# alone), then a quick NIAH/GUI eval of each. JOBS is 'tag|model|train args;tag|model|train args;...'.
# Each job's weights come back as $OUT/<tag>.<model>.safetensors; its .json, logs and eval in $OUT/sweep.tgz.
#   TRAIN_MIN=7 JOBS='a|msa-tiny|--init-from data/checkpoints --seq-end 4096' bash scripts/device_sweep.sh
# A job's args may hold phases separated by ' >> ': each phase warm-starts from the one before (give each
# phase its own --minutes; TRAIN_MIN is the default). Phase i logs to <tag>/logs<i>; the last one is <tag>.
# On a machine of several GPUs, job i runs on GPU i mod (number of GPUs). RECALL=2K,4K,8K adds indexer recall
# at k = 16 (and the first block's share of the dense mass) to the quick eval.
set -u
export PYTHONUNBUFFERED=1 MSA_LAB_AUTOTUNE=${MSA_LAB_AUTOTUNE:-0} OMP_NUM_THREADS=4 PYTHONPATH=$PWD
M=${TRAIN_MIN:-7}
OUT=${OUT:-/tmp/out}
W=/tmp/sw
mkdir -p "$OUT" $W
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
NGPU=$(nvidia-smi -L | wc -l)
IFS=';' read -ra SPECS <<< "$JOBS"
j=0
for spec in "${SPECS[@]}"; do
  IFS='|' read -r tag model args <<< "$spec"
  mkdir -p $W/$tag
  echo "== $tag: $model $args (GPU $((j % NGPU)))"
  (
    export CUDA_VISIBLE_DEVICES=$((j % NGPU))
    prev="" i=0
    IFS='>' read -ra PHASES <<< "${args// >> />}"
    for ph in "${PHASES[@]}"; do
      i=$((i + 1))
      out=$W/$tag; [ $i -lt ${#PHASES[@]} ] && out=$W/$tag/p$i
      python -m msa_lab.train --model $model --minutes "$M" --no-progress --out-dir $out --log-dir $W/$tag/logs$i \
        $prev $ph >> $W/$tag/train.stdout 2>&1 || exit 1
      prev="--init-from $out"
    done
  ) &
  j=$((j + 1))
done
wait
for spec in "${SPECS[@]}"; do
  IFS='|' read -r tag model args <<< "$spec"
  echo "== $tag ($model)"; tail -n 3 $W/$tag/train.stdout
  python - $W/$tag/logs*/$model/log.jsonl <<'PY'
import json, sys
from collections import defaultdict
phases = [[json.loads(l) for l in open(f)] for f in sys.argv[1:]]
rows = [r for p in phases for r in p]
secs = sum(p[-1]["seconds"] for p in phases if p)  # each phase's clock starts at 0
print(f"steps {len(rows)} tokens {sum(r['tokens'] for r in rows):,} seconds {secs:.0f} "
      f"tok/s {sum(r['tokens'] for r in rows) / secs:.0f}")
q = max(1, len(rows) // 4)
for i in range(0, len(rows), q):
    d, lm = defaultdict(list), defaultdict(list)
    for r in rows[i:i + q]:
        lm[r["task"]].append(r["lm_loss"])
        if r.get("digit_loss") is not None and r["task"].startswith("niah"):
            d[r["task"]].append(r["digit_loss"])
    print(f"  steps {i + 1}-{min(len(rows), i + q)} n={rows[min(len(rows), i + q) - 1]['seq_len']} answer loss: "
          + " ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in sorted(lm.items())))
    print("     digit loss: " + " ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in sorted(d.items())))
PY
  cp $W/$tag/$model.safetensors "$OUT/$tag.$model.safetensors"  # its .json is in sweep.tgz (8 files come back)
done
j=0
for spec in "${SPECS[@]}"; do  # side by side, like the training
  IFS='|' read -r tag model args <<< "$spec"
  CUDA_VISIBLE_DEVICES=$((j % NGPU)) timeout ${EVAL_S:-60} python scripts/quick_eval.py --checkpoint-dir $W/$tag --models $model --out $W/$tag/quick_eval.json \
    --lengths ${EVAL_LENGTHS:-1024,4096,16384} --n ${EVAL_N:-3} --n-vision ${N_VISION:-20} ${RECALL:+--recall $RECALL} \
    > $W/$tag/quick_eval.txt 2>&1 &
  j=$((j + 1))
done
wait
for spec in "${SPECS[@]}"; do
  IFS='|' read -r tag model args <<< "$spec"
  tail -n 2 $W/$tag/quick_eval.txt | sed "s/^/$tag /"
done
tar czf "$OUT/sweep.tgz" -C $W --exclude '*.safetensors' --exclude '*.pt' .
ls -la "$OUT"
