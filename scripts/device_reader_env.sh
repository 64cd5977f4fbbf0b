# Sourced by scripts/device_reader.sh and scripts/device_reader_ab.sh (set W and OMP_NUM_THREADS first): the
# environment, the work and output folders, the card and versions, and the front end both scripts pre-train.
set -u
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD MSA_LAB_AUTOTUNE=0
export OMP_NUM_THREADS
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" "$W"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
# 256 px in 16 px patches with a conv stem, and the GUI pointer (see data/train/probes/reader-2026-12-07); the stem
# convolves whole pictures unless STEM_SCOPE=patch (data/train/probes/stem-2026-12-07). IMAGE_SIZE=512 PATCH_SIZE=32
# PATCH_POOL=2: the same 256 tokens per picture read from twice the pixels (ModelConfig.patch_pool; a warm start
# from the 256-px checkpoint computes what it did, data/train/probes/hires-2026-12-08)
front_end() {  # image side, patch side, pool
  echo "--image-size $1 --patch-size $2 --patch-pool $3 --patch-stem 32 --pointer-dim 64 --stem-scope ${STEM_SCOPE:-image}"
}
FRONT_END=$(front_end ${IMAGE_SIZE:-256} ${PATCH_SIZE:-16} ${PATCH_POOL:-1})
