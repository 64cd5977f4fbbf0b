#!/bin/bash
# Two GPU calls on the same warm machine (2026-11-27, ninth session): msa-tiny's vision recipe of the eighth
# session (run f64, scripts/device_vision_encoder.sh) continued for ~15 minutes from the shipped msa-tiny, one
# schedule (--total-minutes) over two calls. The machine keeps /tmp/vl between calls while it is warm (30 s).
# As run, part 2 failed: --resume rebuilt the preset's config instead of the saved one (fixed in msa_lab.train
# since), so only part 1 trained (1,385 steps, 500 s, to 55% of the 15.3-minute schedule).
#   PART=1 bash scripts/device_vision_long.sh     (trains, saves resume state; a fp16 copy comes back)
#   PART=2 bash scripts/device_vision_long.sh     (resumes, then the quick eval of the eighth session, n 100)
set -u
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0 OMP_NUM_THREADS=4
W=/tmp/vl; mkdir -p $W "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
MIX="image_qa:2,image_qa_shape:1,image_qa_count:1,image_qa_word:1,image_colour:0.3,gui:1,niah_single:0.8"
MIX="$MIX,niah_multi_query:0.3,copy:0.2"
A="--model msa-tiny --no-progress --out-dir $W/g64 --log-dir $W/logs --total-minutes ${TOTAL_MIN:-15.3}"
A="$A --vision-layers 2 --seq-start 1024 --seq-end 4096 --lr ${LR:-4e-4} --warmup-steps 20 --pose-prob 0.3"
A="$A --dense-warmup 0 --max-examples 512 --data-workers ${WORKERS:-14} --patch-aux-weight 1.0 --image-size 64 --save-every 2 ${EXTRA:-}"
if [ "${PART:-1}" = 1 ]; then
  python -m msa_lab.train $A --init-from data/checkpoints --minutes ${MIN1:-8.8} --tasks $MIX > $W/train1.txt 2>&1
  tail -n 15 $W/train1.txt
  cp $W/g64/msa-tiny.safetensors "$OUT/part1.msa-tiny.safetensors"; cp $W/g64/msa-tiny.json "$OUT/part1.msa-tiny.json"
else
  python -m msa_lab.train $A --resume --minutes ${MIN2:-6.5} --tasks $MIX > $W/train2.txt 2>&1
  tail -n 15 $W/train2.txt
  cp $W/g64/msa-tiny.safetensors $W/g64/msa-tiny.json "$OUT/"
  timeout ${EVAL_S:-110} python scripts/quick_eval.py --checkpoint-dir $W/g64 --models msa-tiny --out $W/quick_eval.json \
    --lengths 4096,131072 --n 2 --n-vision 100 > $W/quick_eval.txt 2>&1
  tail -n 3 $W/quick_eval.txt
fi
(cd $W && tar czf "$OUT/vl${PART:-1}.tgz" --exclude '*.safetensors' logs $(ls train*.txt quick_eval.* 2>/dev/null))
ls -la "$OUT"
