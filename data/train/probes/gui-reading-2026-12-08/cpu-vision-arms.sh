#!/bin/bash
# CPU probe (2026-12-08): b69a2b9e's vision stage continued for 250 updates of 32 GUI screens, three arms, the same
# seed, schedule and held-out screens (eval seed 4242, 256 screens). .ck_r1/f held b69a2b9e with its patch heads,
# as data/checkpoints does now.
#   low:  256 px, 16-px patches (as shipped)
#   high: 512 px, 32-px patches, --patch-pool 2 (the same 256 tokens from twice the pixels)
#   text: as low, with the fields' "Label:" text supervised (msa_lab.train.patch_labels, label_box)
# low and high ran before the label_box change; text after it.
cd /work/main && source .venv/bin/activate
export OMP_NUM_THREADS=2
C="--init-from .ck_r1/f --tasks gui:1 --batch 32 --max-steps 250 --minutes 40 --lr 5e-4 --warmup-steps 10 --eval-n 256 --eval-every 3 --workers 0 --device cpu --no-progress"
python -m msa_lab.vision_pretrain $C --out-dir /tmp/hires/low > /tmp/hires/low.stdout 2>&1
python -m msa_lab.vision_pretrain $C --image-size 512 --patch-size 32 --patch-pool 2 --out-dir /tmp/hires/high > /tmp/hires/high.stdout 2>&1
python -m msa_lab.vision_pretrain $C --out-dir /tmp/hires/text > /tmp/hires/text.stdout 2>&1
# then both 256-px arms continued side by side, one thread each, from their 250-update weights (continue_arms.py).
# With --max-steps set, vision_pretrain ignores --minutes: both were stopped by hand after ~345 updates (2,420 s),
# so the logs end at the evals of updates 255/257 (by kind) and the stdout at 341/345 (overall).
export OMP_NUM_THREADS=1
C2="--tasks gui:1 --batch 32 --max-steps 1000 --minutes 40 --lr 5e-4 --warmup-steps 10 --eval-n 256 --eval-every 8 --workers 0 --device cpu --no-progress"
P=data/train/probes/gui-reading-2026-12-08/continue_arms.py
python $P box-only --init-from /tmp/hires/low $C2 --out-dir /tmp/hires/low2 > /tmp/hires/low2.stdout 2>&1 &
python $P with-text --init-from /tmp/hires/text $C2 --out-dir /tmp/hires/text2 > /tmp/hires/text2.stdout 2>&1 &
wait
