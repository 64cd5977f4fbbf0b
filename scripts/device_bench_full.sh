#!/bin/bash
# One GPU call for the kernels issue's "every row from one `msa-lab bench` process": both shapes (m3,
# llama3_8b) at the default lengths (8K..1M), decode at 128K and 1M with CUDA graphs, Flex, the memory row.
# --budget-s keeps it inside the call: rows predicted not to fit are recorded as skipped, with the reason,
# and the JSON is saved after every row, so it comes back even if the call is cut.
#   BENCH_S=520 bash scripts/device_bench_full.sh      (then copy $OUT/bench_full.json to data/bench/)
set -u
export PYTHONUNBUFFERED=1 MSA_LAB_AUTOTUNE=${MSA_LAB_AUTOTUNE:-0} PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
timeout $(( ${BENCH_S:-520} + 40 )) python -m msa_lab.bench --flex --budget-s ${BENCH_S:-520} --out $OUT/bench_full.json 2>&1 | tail -80
} 2>&1 | tee $OUT/log.txt
ls -la "$OUT"
