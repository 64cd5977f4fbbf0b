#!/bin/bash
# One GPU call (2026-12-07, twelfth session): a front end that can read. Vision pre-training of the patch path and
# the encoder alone (msa_lab.vision_pretrain) at 256 px with 16 px patches and a conv stem, so that a picture is
# 256 tokens, all of them inside MSA's top-k window at a question's length (1,024 tokens at 8 px patches were not:
# 17 blocks against top_k 8, which is why counting broke in the eleventh session); then the full model from it with
# the GUI pointer (msa_lab.train); then the quick eval on the official vision seed 0 (100 GUI, 100 image QA) and
# NIAH at 4K.
#   bash scripts/device_reader.sh                                  (from the shipped msa-tiny)
#   V_INIT=.ck_reader/run1/f bash scripts/device_reader.sh         (carry [".ck_reader/run1/f"]): both stages again,
#       from the first call's full model (its patch heads beside it)
#   PART=2 INIT=.ck_reader/f bash scripts/device_reader.sh         (carry [".ck_reader/f"]): the full stage goes on
# Thirteenth session (CPU probes, data/train/probes/stem-2026-12-07): the vision stage learns per update, not per
# picture, so it now takes batches of 64 (V_BATCH) and up to 4 updates per drawn batch (V_REPLAY: recent batches
# replayed while the next is drawn), and its stem convolves whole pictures (STEM_SCOPE, scripts/device_reader_env.sh).
# F_BAL=1 (default): the full stage's per-patch loss balanced as the vision stage's; its mix weighs counting and
# words 1 (was 0.5). Defaults fill one 600 s call (3.4 + 5.0 min of training); EVAL_S=0 skips the in-call eval (run
# python scripts/quick_eval.py --device cpu --checkpoint-dir DIR --models msa-tiny --lengths 4096 --n 1
# --n-vision 100 --vision-seed 0 on the returned weights, ~4 min, no device time).
W=/tmp/rd OMP_NUM_THREADS=4
source scripts/device_reader_env.sh
V_MIN=${V_MIN:-3.4}
F_MIN=${F_MIN:-5.0}
INIT=${INIT:-$W/v}
if [ "${PART:-1}" = 1 ]; then
  python -m msa_lab.vision_pretrain --init-from ${V_INIT:-data/checkpoints} $FRONT_END \
    --minutes "$V_MIN" --batch ${V_BATCH:-64} --lr ${V_LR:-1e-3} --replay ${V_REPLAY:-4} --tasks ${V_TASKS:-gui:2,image_qa:1,image_qa_word:2} \
    --no-progress --out-dir $W/v > $W/v.stdout 2>&1 || { tail -n 30 $W/v.stdout; exit 1; }
  grep -E "^(step|final)" $W/v.stdout
  cp $W/v/msa-tiny.safetensors "$OUT/v.msa-tiny.safetensors"
fi
E="--seq-start 2048 --seq-end 8192 --lr ${LR:-4e-4} --warmup-steps 20 --pose-prob 0.3 --dense-warmup 0"
E="$E --max-examples 512 --data-workers 14 --patch-aux-weight 1.0 --concentration-weight 3 --pointer-weight 1"
[ "${F_BAL:-1}" = 1 ] && E="$E --patch-balanced"
MIX="niah_single:0.5,niah_multi_query:0.3,niah_multi_key:0.2,variable_tracking:0.2,copy:0.3"
MIX=${F_TASKS:-$MIX,image_qa:1.5,image_qa_count:1,image_qa_word:1,gui:4}
python -m msa_lab.train --model msa-tiny --minutes "$F_MIN" --no-progress --out-dir $W/f --log-dir $W/f/logs \
  --init-from "$INIT" $E --tasks "$MIX" > $W/f.stdout 2>&1 || { tail -n 30 $W/f.stdout; exit 1; }
tail -n 2 $W/f.stdout
python - $W/f/logs/msa-tiny/log.jsonl <<'PY'
import json, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1])]
if not rows:
    sys.exit("no training steps were logged")
print(f"steps {len(rows)} tokens {sum(r['tokens'] for r in rows):,} seconds {rows[-1]['seconds']:.0f}")
q = max(1, len(rows) // 4)
for i in range(0, len(rows), q):
    lm, pa, pl = defaultdict(list), [], []
    for r in rows[i:i + q]:
        lm[r["task"]].append(r["lm_loss"])
        if "pointer_acc" in r:
            pa.append(r["pointer_acc"]); pl.append(r.get("patch_loss") or 0)
    print(f"  steps {i + 1}-{min(len(rows), i + q)} answer loss: "
          + " ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in sorted(lm.items()))
          + (f" | pointer acc {sum(pa) / len(pa):.2f} patch loss (gui) {sum(pl) / len(pl):.2f}" if pa else ""))
PY
cp $W/f/msa-tiny.safetensors "$OUT/f.msa-tiny.safetensors"
[ "${EVAL_S:-0}" -gt 0 ] && timeout ${EVAL_S:-0} python scripts/quick_eval.py --checkpoint-dir $W/f --models msa-tiny --out $W/f/quick_eval.json \
  --lengths 4096 --n 1 --n-vision ${N_VISION:-100} --vision-seed 0 > $W/eval.txt 2>&1
tail -n 2 $W/eval.txt
tar czf "$OUT/reader.tgz" -C $W --exclude 'msa-tiny.safetensors' --exclude 'resume.safetensors' --exclude '*.pt' .
ls -la "$OUT"
