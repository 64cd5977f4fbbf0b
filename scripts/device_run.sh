#!/usr/bin/env bash
# One call on the GPU machine: install, report the stack, run the GPU tests, run the benchmark.
# Runs from the repo root; whole run <= TOTAL_S seconds (default 520, under 9 minutes) and prints the
# results table last. Everything it produces lands in $OUT (tests.log, bench.log, bench.json and
# <date>-<card>[-tag].json).
#
# Environment (all optional):
#   STEPS="install info tests bench"  steps to run, any subset, in this order
#   TOTAL_S=520          wall-clock limit for the whole script; the bench gets what is left
#   TEST_TIMEOUT_S=180   limit for the GPU tests
#   BENCH_BUDGET_S       cap the bench's --budget-s below what is left
#   BENCH_SHAPES=m3,llama3_8b  BENCH_LENGTHS=8K,32K,128K,512K,1M  BENCH_DECODE_LENGTHS=128K,1M
#   BENCH_TAG            file-name suffix (e.g. one call per shape: BENCH_TAG=llama)
#   QUICK=1              bench --quick (m3 at 8K/32K)
#   BENCH_ARGS           more arguments for python -m msa_lab.bench (e.g. "--no-flex")
#   PYTHON=python        interpreter
# Examples:
#   scripts/device_run.sh
#   STEPS="install bench" BENCH_SHAPES=m3 scripts/device_run.sh
#   STEPS="install bench" BENCH_SHAPES=llama3_8b BENCH_TAG=llama scripts/device_run.sh
set -u
START=$(date +%s)
TOTAL_S=${TOTAL_S:-520}
STEPS=${STEPS:-install info tests bench}
TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-180}
PY=${PYTHON:-$(command -v python || command -v python3)}
OUT=${OUT:-$(mktemp -d /tmp/msa-device-out.XXXX)}
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1

has() { [[ " $STEPS " == *" $1 "* ]]; }
left() { echo $(( START + TOTAL_S - $(date +%s) )); }
say() { echo "== [$(( $(date +%s) - START ))s] $*"; }
status=0
table_json=

if has install; then
  say "install: pip install --no-deps --no-build-isolation -e ."
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
    # msa_lab.kernels is the top-level kernels/ folder mapped by pyproject; without the editable
    # install, a shim package of links gives the same import path.
    tail -5 "$OUT/install.log"
    shim=$(mktemp -d)
    mkdir "$shim/msa_lab"
    for f in "$PWD"/msa_lab/*; do ln -s "$f" "$shim/msa_lab/"; done
    ln -s "$PWD/kernels" "$shim/msa_lab/kernels"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    say "install failed (log: $OUT/install.log); importing through the link shim $shim instead"
  fi
fi

if has info; then
  say "info"
  nvidia-smi -L 2>&1 || echo "nvidia-smi not found"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null
  "$PY" - <<'PYEOF'
import sys, torch
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  CUDA {torch.version.cuda}  "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else '-'}")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as e:
    print(f"triton unavailable: {e}")
try:
    import msa_lab.kernels as k
    ops = [f for f in ("select_blocks", "sparse_attention", "msa_attention") if hasattr(k, f)]
    print("msa_lab.kernels:", ", ".join(ops), "| indexer:", getattr(k, "INDEXER", "?"))
except Exception as e:
    print(f"msa_lab.kernels failed to import: {type(e).__name__}: {e}")
PYEOF
fi

if has tests; then
  if [ -d tests/gpu ]; then
    t=$(( $(left) - 60 < TEST_TIMEOUT_S ? $(left) - 60 : TEST_TIMEOUT_S ))
    if [ "$t" -gt 10 ]; then
      say "tests: pytest -m gpu tests/gpu -x -q (limit ${t}s)"
      timeout -k 10 "$t" "$PY" -m pytest -m gpu tests/gpu -x -q -p no:cacheprovider >"$OUT/tests.log" 2>&1
      rc=$?
      tail -n 25 "$OUT/tests.log"
      [ $rc -eq 124 ] && echo "tests: stopped after ${t}s (TEST_TIMEOUT_S); see $OUT/tests.log"
      [ $rc -ne 0 ] && status=1
      say "tests: exit $rc"
    else
      say "tests: skipped, only $(left)s left of TOTAL_S=$TOTAL_S"
    fi
  else
    say "tests: no tests/gpu folder yet, skipped"
  fi
fi

if has bench; then
  budget=$(( $(left) - 40 ))
  [ -n "${BENCH_BUDGET_S:-}" ] && [ "$BENCH_BUDGET_S" -lt "$budget" ] && budget=$BENCH_BUDGET_S
  if [ "$budget" -lt 20 ]; then
    say "bench: skipped, only $(left)s left of TOTAL_S=$TOTAL_S"
  else
    args=(--budget-s "$budget" --out "$OUT/" --no-final-table)
    [ "${QUICK:-0}" = 1 ] && args+=(--quick)
    [ -n "${BENCH_SHAPES:-}" ] && args+=(--shapes "$BENCH_SHAPES")
    [ -n "${BENCH_LENGTHS:-}" ] && args+=(--lengths "$BENCH_LENGTHS")
    [ -n "${BENCH_DECODE_LENGTHS:-}" ] && args+=(--decode-lengths "$BENCH_DECODE_LENGTHS")
    [ -n "${BENCH_TAG:-}" ] && args+=(--tag "$BENCH_TAG")
    # shellcheck disable=SC2206
    [ -n "${BENCH_ARGS:-}" ] && args+=($BENCH_ARGS)
    # the bench skips rows that would overrun its budget; the hard limit is for a row that overruns anyway
    # (SIGTERM makes it write what it has; rows are saved as they finish, so even a SIGKILL loses one row)
    hard=$(( $(left) - 5 ))
    say "bench: python -m msa_lab.bench ${args[*]} (hard limit ${hard}s)"
    timeout -k 15 "$hard" "$PY" -u -m msa_lab.bench "${args[@]}" 2>&1 | tee "$OUT/bench.log"
    rc=${PIPESTATUS[0]}
    [ $rc -ne 0 ] && status=1 && say "bench: exit $rc"
    json=$(ls -t "$OUT"/*.json 2>/dev/null | grep -v '/bench.json$' | head -1)
    if [ -n "$json" ]; then
      cp "$json" "$OUT/bench.json"
      mkdir -p data/bench && cp "$json" data/bench/
      say "results: $json (also $OUT/bench.json)"
      table_json=$json
    else
      say "bench: no results JSON was written"
      status=1
    fi
  fi
fi
if [ -n "${table_json:-}" ]; then  # the table comes last, so it is what a tail of the output shows
  say "done (exit $status); results table:"
  echo
  "$PY" scripts/bench_table.py "$table_json" || status=1
else
  say "done (exit $status)"
fi
exit $status
