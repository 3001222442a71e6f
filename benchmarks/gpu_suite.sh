#!/usr/bin/env bash
# The GPU runbook: everything a lent GPU should measure, in priority order, inside a time budget.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]        # OUT_DIR default: benchmarks/results/gpu_suite
#   SUITE_BUDGET_S=510 SUITE_RUNS=50 bash benchmarks/gpu_suite.sh
#   SUITE_BASE=vit_tiny_patch16_224 SUITE_SMALL=vit_tiny_patch16_224 SUITE_RUNS=2 SUITE_BATCHES=2 bash ...   # smoke test
#
# Writes OUT_DIR/suite.log and OUT_DIR/suite.json (every step's JSON, merged; rewritten after each
# step, so a run cut short keeps what finished). Steps whose estimate does not fit the time left are
# skipped and listed as such. Throughput: dense vs merged ViT-B/16 (then ViT-S/16), both merge
# implementations (gather, dense) timed round-robin in one process, the timm (+ facebookresearch-style
# ToMe) peer in the same rounds when torch and timm import; what merging itself costs
# (merge_overhead: each plan vs the same token counts with free merging); the HLO census on this
# backend; batch 256 and bfloat16. Run from the repository root; needs jax (with its GPU plugin) and the packages of
# pyproject.toml, or only those benchmarks import (PYTHONPATH=. is set here).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results/gpu_suite}
BUDGET=${SUITE_BUDGET_S:-510}
RUNS=${SUITE_RUNS:-50}
PY=${PYTHON:-python3}
STEPS=${SUITE_STEPS_DIR:-$OUT_DIR/steps}  # each step's own JSON
mkdir -p "$OUT_DIR" "$STEPS"
LOG="$OUT_DIR/suite.log"
: >"$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}  # leave room for the torch peer
START=$(date +%s)

log() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

merge_json() {
  "$PY" - "$OUT_DIR" "$STEPS" <<'EOF'
import json, sys, pathlib
out, step_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
steps = {}
for f in sorted(step_dir.glob("*.json")):
    try:
        steps[f.stem] = json.loads(f.read_text())
    except ValueError:
        steps[f.stem] = {"error": "unreadable"}
status = (step_dir / "status.txt").read_text().splitlines() if (step_dir / "status.txt").exists() else []
(out / "suite.json").write_text(json.dumps({"status": status, "steps": steps}, indent=1))
EOF
}

# step NAME ESTIMATE_S COMMAND...: run COMMAND if ESTIMATE_S fits in what is left of the budget.
step() {
  local name=$1 estimate=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  if ((left < estimate)); then
    log "skip $name (estimate ${estimate}s, ${left}s left)"
    echo "$name skipped (estimate ${estimate}s > ${left}s left)" >>"$STEPS/status.txt"
    return
  fi
  log "start $name (estimate ${estimate}s, ${left}s left): $*"
  timeout "$left" "$@" >>"$LOG" 2>&1
  local rc=$?
  log "end $name: exit $rc"
  echo "$name exit $rc after $(($(date +%s) - START))s" >>"$STEPS/status.txt"
  merge_json
}

: >"$STEPS/status.txt"
log "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c "import jax, sys; print('jax', jax.__version__, jax.default_backend(), jax.devices()); print(sys.version)"
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.is_available())" 2>&1 | tail -1
} >>"$LOG" 2>&1

# Estimates are from the H200 run of 2026-11-27 (BENCHMARKS.md section 10): XLA autotunes every new
# matmul shape, and a merged ViT-B has a new token count in every block, so one merged variant
# takes 44-75 s to compile there (the dense model 7 s). A grid of 19 variants did not compile within
# 7 minutes, hence small steps, most important first.
BENCH="benchmarks/bench_merging.py --merge-impls gather,dense --runs $RUNS --warmup-s 1"
B=${SUITE_BASE:-vit_base_patch16_224}
# First (issue 27): `fastvit bench` of ViT-B/16 dense vs ToMe r=16 at batch 32 and 256, its compile
# cold and then from the persistent cache (a fresh cache folder, the same command twice), then the
# runtime options: bfloat16 (auto = cuDNN's fused attention on GPU) and bfloat16 with einsum
# attention, and aligned token counts (--align 8). Each writes fastvit's JSON.
export FASTVIT_COMPILE_CACHE="$OUT_DIR/xla_cache"
rm -rf "$FASTVIT_COMPILE_CACHE"
fv_bench() {  # fv_bench NAME ARGS...: one `fastvit bench --json` into $STEPS/NAME.json
  local name=$1
  shift
  "$PY" -m fastvit_jax bench --model $B --method tome --r ${SUITE_R_BENCH:-16} --batch-sizes ${SUITE_BATCHES:-32,256} \
    --runs $RUNS "$@" --json >"$STEPS/$name.json"
}
export -f fv_bench
export PY B RUNS STEPS
# Before anything else (issue 37): where a first run's time goes, trace / lower / XLA compile of dense
# and ToMe r=16 ViT-B/16 at batch 32 with the persistent cache off (benchmarks/compile_cost.py).
step compile_cost_base 150 "$PY" benchmarks/compile_cost.py --models $B --batch-sizes 32 --points "dense,tome r=16" \
  --token-buckets none,1 --out "$STEPS/compile_cost_base.json"
step fv_base_cold 200 bash -c 'fv_bench fv_base_cold'
step fv_base_cached 90 bash -c 'fv_bench fv_base_cached'
step fv_base_bf16 200 bash -c 'fv_bench fv_base_bf16 --dtype bfloat16'
step fv_base_align8 200 bash -c 'fv_bench fv_base_align8 --align 8'
step fv_base_bf16_einsum 200 bash -c 'fv_bench fv_base_bf16_einsum --dtype bfloat16 --attention einsum'
S=${SUITE_SMALL:-vit_small_patch16_224}  # (a smoke test on a CPU: SUITE_SMALL=SUITE_BASE=vit_tiny_patch16_224 ...)
step base_b32_fp32 170 "$PY" $BENCH --models $B --methods tome,lgtm --r ${SUITE_R:-16} --batch-size 32 \
  --out "$STEPS/base_b32_fp32.json"
step overhead_base_b32 110 "$PY" benchmarks/merge_overhead.py --model $B --methods tome --r 16 --rounds 20 \
  --out "$STEPS/overhead_base_b32.json"
step base_b256_fp32 110 "$PY" $BENCH --models $B --methods tome --r 16 --batch-size 256 --no-peer \
  --out "$STEPS/base_b256_fp32.json"
step census_gpu 120 "$PY" benchmarks/hlo_census.py --models $B --points ${SUITE_CENSUS:-tome:16} --platforms "" \
  --out "$STEPS/census_gpu.json"
step base_b32_bf16 110 "$PY" $BENCH --models $B --methods tome --r 16 --batch-size 32 --dtype bfloat16 \
  --out "$STEPS/base_b32_bf16.json"
step small_b32_fp32 150 "$PY" $BENCH --models $S --methods tome,dfe,lgtm --r ${SUITE_R:-13,16} --batch-size 32 \
  --out "$STEPS/small_b32_fp32.json"
step base_b32_dfe_fp32 150 "$PY" $BENCH --models $B --methods dfe --r ${SUITE_R:-13,16} --batch-size 32 \
  --out "$STEPS/base_b32_dfe_fp32.json"
merge_json
log "done; $OUT_DIR/suite.json"
