#!/bin/bash
# One GPU call for candidate checkpoints in data/checkpoints: the full eval of both models (NIAH to 1M for
# msa-tiny, to the 204,800-token limit for dense-200k, recall, GUI, image QA), GPU tests, the migration
# measurements past the limit, and notebook 03 at 1M tokens (alone on the card: it times the redraws).
# Every step is time-boxed; everything comes back in $OUT/ship.tgz plus $OUT/log.txt.
set -u
export PYTHONUNBUFFERED=1 MSA_LAB_AUTOTUNE=0 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
W=/tmp/ship; mkdir -p $W/eval $OUT
{
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
T0=$(date +%s)
[[ " ${EVAL_MODELS-msa-tiny dense-200k} " == *" msa-tiny "* ]] && \
  timeout ${EVAL_S:-280} python -m msa_lab.eval --model msa-tiny --out-dir $W/eval ${MSA_EVAL_ARGS:-} > $W/eval_msa.txt 2>&1 &
[[ " ${EVAL_MODELS-msa-tiny dense-200k} " == *" dense-200k "* ]] && \
  timeout ${EVAL_S:-280} python -m msa_lab.eval --model dense-200k --out-dir $W/eval ${DENSE_EVAL_ARGS:-} > $W/eval_dense.txt 2>&1 &
[ "${GPU_TESTS:-1}" = 1 ] && timeout 200 python -m pytest -q -m gpu tests/gpu -p no:cacheprovider > $W/gpu_tests.txt 2>&1 &
migration() {
  timeout ${MIG_S:-100} python -m msa_lab.migration --lengths ${MIG_LENGTHS:-64K,204800,400000,1M} ${MIG_ARGS:-} \
    --depths 0.1,0.5,0.9 --n 1 --time-budget $(( ${MIG_S:-100} - 30 )) --out $W/migration.json > $W/migration.txt 2>&1
}
# MIG_PARALLEL=1: the migration shares the card with the evals (its prefill times are then upper bounds, and
# the results file says so)
[ "${MIG_PARALLEL:-0}" = 1 ] && MIG_ARGS="${MIG_ARGS:-} --shared-card" migration &
wait
echo "== evals and GPU tests$([ "${MIG_PARALLEL:-0}" = 1 ] && echo ' and migration'): $(( $(date +%s) - T0 )) s"
tail -n 3 $W/eval_*.txt $W/gpu_tests.txt 2>/dev/null
[ "${MIG_PARALLEL:-0}" = 1 ] || migration
echo "== migration"; tail -n 12 $W/migration.txt
[ "${NB_S:-150}" -gt 0 ] && echo "== notebook 03 at 1M" && timeout ${NB_S:-150} python scripts/run_notebook.py notebooks/03_prefill_1m.ipynb --out $W/nb03 \
  -p RUN_TO_END=True -p "EXPORT_DIR='$W/nb03/exp'" > $W/nb03.log 2>&1; tail -8 $W/nb03.log
cat $W/nb03/exp/03_prefill_summary.json 2>/dev/null | head -c 2500; echo
} 2>&1 | tee $W/log.txt
cp $W/log.txt $OUT/
rm -rf $W/nb03/*.ipynb.tmp 2>/dev/null
tar czf $OUT/ship.tgz -C $W .
ls -la $OUT
