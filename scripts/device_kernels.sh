#!/bin/bash
# One GPU call for the kernel items: the whole GPU test suite, the m3 rows at 1M (KV-outer prefill from
# 256K tokens, with the dense baseline in the same call), CUDA-graph decode at 1M, Flex at 32K, notebook
# 03 at 1M tokens, then the llama3_8b rows. Each step is time-boxed; logs and results are in $OUT.
set -u
export PYTHONUNBUFFERED=1 MSA_LAB_AUTOTUNE=0
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
echo "== gpu tests"; timeout ${TESTS_S:-130} python -m pytest -q -m gpu tests/gpu -p no:cacheprovider -rfE 2>&1 | tail -12
echo "== bench m3"; timeout ${M3_S:-200} python -m msa_lab.bench --shapes m3 --lengths 32K,1M --decode-lengths 1M \
  --decode-batches 1,8 --memory-length 0 --no-fp8 --flex --min-reps 1 --target-s 1 --out $OUT/bench_m3.json 2>&1 | tail -40
echo "== notebook 03 at 1M"; timeout ${NB_S:-150} python scripts/run_notebook.py notebooks/03_prefill_1m.ipynb --out /tmp/nb03 \
  -p RUN_TO_END=True -p "EXPORT_DIR='/tmp/nb03/exp'" > /tmp/nb03.log 2>&1; echo "rc $?"; tail -15 /tmp/nb03.log
cp /tmp/nb03.log $OUT/nb03.log
cp /tmp/nb03/exp/03_prefill.html /tmp/nb03/exp/03_prefill_summary.json $OUT/ 2>/dev/null
cat /tmp/nb03/exp/03_prefill_summary.json 2>/dev/null | head -c 2500; echo
echo "== bench llama3_8b"; timeout ${LLAMA_S:-90} python -m msa_lab.bench --shapes llama3_8b --lengths 128K \
  --decode-lengths 128K --decode-batches 1,8 --memory-length 0 --no-fp8 --min-reps 1 --target-s 1 \
  --out $OUT/bench_llama.json 2>&1 | tail -25
} 2>&1 | tee $OUT/log.txt
ls -la "$OUT"
