#!/bin/bash
# One GPU call after training: GPU tests, Flex and KV-outer benchmark rows, notebook 03 at 1M tokens,
# and the dense-200k vs msa-tiny migration measurements. Every step is time-boxed; all output is in $OUT.
set -u
export PYTHONUNBUFFERED=1 MSA_LAB_AUTOTUNE=0
{
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== gpu tests"; timeout 90 python -m pytest -q -m gpu tests/gpu -p no:cacheprovider 2>&1 | tail -6
echo "== bench flex"; timeout 130 python -m msa_lab.bench --shapes m3 --lengths 32K,128K,512K --decode-lengths '' \
  --memory-length 0 --no-fp8 --flex --min-reps 2 --target-s 1 --out $OUT/bench_flex.json 2>&1 | tail -22
echo "== bench kv_outer"; MSA_LAB_PREFILL_SCHEDULE=kv_outer timeout 80 python -m msa_lab.bench --shapes m3 \
  --lengths 128K,512K --decode-lengths '' --memory-length 0 --no-fp8 --min-reps 2 --target-s 1 \
  --out $OUT/bench_kvouter.json 2>&1 | tail -14
echo "== notebook 03 at 1M"; timeout 140 python scripts/run_notebook.py notebooks/03_prefill_1m.ipynb --out /tmp/nb03 \
  -p RUN_TO_END=True -p "EXPORT_DIR='/tmp/nb03/exp'" > /tmp/nb03.log 2>&1; tail -15 /tmp/nb03.log
cp /tmp/nb03.log $OUT/nb03.log
cp /tmp/nb03/exp/03_prefill.html /tmp/nb03/exp/03_prefill_summary.json $OUT/ 2>/dev/null
cp /tmp/nb03/*.run.json $OUT/nb03.run.json 2>/dev/null
cat /tmp/nb03/exp/03_prefill_summary.json 2>/dev/null | head -c 3000; echo
echo "== migration"; timeout 80 python -m msa_lab.migration --lengths 64K,400000 --depths 0.5 --n 1 --time-budget 60 \
  --out $OUT/migration.json 2>&1 | tail -8
} 2>&1 | tee $OUT/log.txt
ls -la $OUT
