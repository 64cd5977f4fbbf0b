#!/bin/bash
# One GPU call (2026-12-07, twelfth session): does the balanced per-patch loss teach the encoder to read words?
# Two vision pre-training runs side by side from the same warm start, the same mix and seed, 7 drawing processes
# each: the balanced loss (the default) and the plain one (--plain-loss). Their held-out figures (eval seed 4242)
# are printed every minute; the balanced run's weights come back as $OUT/vb.msa-tiny.safetensors.
#   V_INIT=.ck_reader/run1/f bash scripts/device_reader_ab.sh      (carry [".ck_reader/run1/f"])
W=/tmp/rab OMP_NUM_THREADS=2
source scripts/device_reader_env.sh
for run in vb vp; do
  extra=""; [ $run = vp ] && extra="--plain-loss"
  python -m msa_lab.vision_pretrain --init-from ${V_INIT:-data/checkpoints} $FRONT_END \
    --minutes ${V_MIN:-4.0} --workers 7 --tasks ${V_TASKS:-gui:2,image_qa:1,image_qa_word:2} \
    $extra --no-progress --out-dir $W/$run > $W/$run.stdout 2>&1 &
done
wait
for run in vb vp; do echo "== $run"; grep -E "^(step|final|patch heads)" $W/$run.stdout || tail -n 20 $W/$run.stdout; done
cp $W/vb/msa-tiny.safetensors "$OUT/vb.msa-tiny.safetensors"
tar czf "$OUT/reader_ab.tgz" -C $W --exclude 'msa-tiny.safetensors' --exclude 'resume.safetensors' .
ls -la "$OUT"
