#!/bin/bash
# One GPU call (planned 2026-12-08, fifteenth session, for the next one with a GPU): does reading GUI labels go faster
# from twice the pixels? Two vision pre-training runs side by side from the shipped msa-tiny (its patch heads beside
# it in data/checkpoints), the same mix, seed and minutes, 7 drawing processes each: 256 px in 16-px patches (as
# shipped) and 512 px in 32-px patches pooled by 2 (--patch-pool 2: the same 256 tokens; the warm start computes
# what the 256-px one does). Both supervise the fields' "Label:" text (msa_lab.train.patch_labels). Their held-out
# figures (eval seed 4242; GUI labels read by element kind) print every minute; both runs' weights come back as
# $OUT/{r256,r512}.msa-tiny.safetensors, their patch heads and logs in $OUT/reader_res.tgz. The CPU probes that
# planned it: data/train/probes/gui-reading-2026-12-08.
#   bash scripts/device_reader_res.sh
# Then the full stage from the better one (carry it, with its patch heads and json, as .ck_res/v):
#   PART=2 INIT=.ck_res/v bash scripts/device_reader.sh
W=/tmp/rres OMP_NUM_THREADS=2
source scripts/device_reader_env.sh
for side in 256 512; do
  python -m msa_lab.vision_pretrain --init-from ${V_INIT:-data/checkpoints} \
    $(front_end $side $((side / 16)) $((side / 256))) --minutes ${V_MIN:-4.5} \
    --workers 7 --batch ${V_BATCH:-64} --lr ${V_LR:-1e-3} --replay ${V_REPLAY:-4} \
    --tasks ${V_TASKS:-gui:3,image_qa:1,image_qa_word:1} --no-progress --out-dir $W/r$side > $W/r$side.stdout 2>&1 &
done
wait
for side in 256 512; do
  echo "== $side px"; grep -E "^(step|final|patch heads)" $W/r$side.stdout || tail -n 20 $W/r$side.stdout
  cp $W/r$side/msa-tiny.safetensors "$OUT/r$side.msa-tiny.safetensors"
done
tar czf "$OUT/reader_res.tgz" -C $W --exclude 'msa-tiny.safetensors' --exclude 'resume.safetensors' .
ls -la "$OUT"
