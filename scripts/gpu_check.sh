#!/usr/bin/env bash
# The GPU path, run and measured on a GPU machine. Not installed; run from the repo root:
#
#   scripts/gpu_check.sh tests    # tests/test_cuda.py, then the whole suite with CUDA visible (TRITON_INTERPRET=0)
#   scripts/gpu_check.sh suite    # the whole suite alone (xdist, WORKERS=8)
#   scripts/gpu_check.sh cli      # the commands as a user runs them: train-tokenizer (both stages), train
#                               # (bf16, --resume, --attention flex, torchrun + NCCL), generate, fid
#   scripts/gpu_check.sh sample   # kernels vs references; var-d16 sampling: kernels / eager / compile / VAR
#   scripts/gpu_check.sh train    # var-d16 training step: SDPA / FlexAttention / VAR's step
#   scripts/gpu_check.sh demo     # the demo under load: one-at-a-time vs batched
#   scripts/gpu_check.sh all      # one call of about 9 minutes: the CUDA tests, the sampler table
#                               # (one CUDA graph per run beside VAR), the training table, the demo
#                               # table, HART-0.7B at 1024 px (eager and one graph); each part under
#                               # its own time limit, so one that hangs does not take the others
#
# Logs go to $OUT (or ./gpu-out), written as they come (no filter in the pipe buffers them: a run
# stopped by a time limit keeps what it printed). Python packages the machine lacks come as wheels in
# .whl/ (scripts/gpu_wheels.sh, carried), installed to /tmp/site, or as a site folder SITE_TAR=site.tar.xz
# unpacked there; /tmp/site goes first on PYTHONPATH. VAR_SRC
# points at a FoundationVision/VAR checkout for the side-by-side timings (default .ext/VAR), HART_SRC
# at a mit-han-lab/hart one (default .ext/hart; `all` only).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
VAR_SRC=${VAR_SRC:-.ext/VAR}
HART_SRC=${HART_SRC:-.ext/hart}  # a mit-han-lab/hart checkout (its hart/ folder is enough), for `all`
. scripts/gpu_lib.sh
gpu_site /tmp/site "${SITE_TAR:-}" || exit 1
export GRADIO_ANALYTICS_ENABLED=False
W=/tmp/gpu-check
DEV=${DEVICE:-cuda}  # DEVICE=cpu QUICK=1: a dry run of the cli stage on a CPU, with few steps
q() { if [ -n "${QUICK:-}" ]; then echo $(( ($1 + 49) / 50 * 2 )); else echo "$1"; fi; }

case "${1:-}" in
tests|suite)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'
  if [ "$1" = tests ]; then
    step "CUDA tests"
    TRITON_INTERPRET=0 python -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tee "$OUT/tests_cuda.log"
  fi
  step "the whole suite with CUDA visible"
  TRITON_INTERPRET=0 timeout "${SUITE_TIMEOUT:-420}" python -m pytest -q -p no:cacheprovider -rs --ignore tests/test_cuda.py \
    --timeout 240 -n "${WORKERS:-8}" tests 2>&1 | tee "$OUT/tests_all.log"
  ;;
cli)
  rm -rf "$W" && mkdir -p "$W"
  step "train-tokenizer, stage 1"
  hart train-tokenizer --preset fm-32 --data shapes --out "$W/tok" --steps $(q 150) --batch-size 64 --save-every $(q 150) \
    --device $DEV --dtype bf16 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -3
  step "train-tokenizer, stage 2 (decoder only)"
  hart train-tokenizer --init "$W/tok" --freeze-codebook --data shapes --out "$W/tok2" --steps $(q 50) --batch-size 64 \
    --save-every $(q 50) --device $DEV --dtype bf16 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -3
  step "train, 200 of 400 steps, then --resume"
  G="--tokenizer $W/tok2 --preset fm-s --data synthetic --batch-size 64 --save-every $(q 200) --device $DEV --dtype bf16"
  hart train $G --out "$W/gen" --steps $(q 200) 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -2
  hart train $G --out "$W/gen" --steps $(q 400) --resume 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -2
  step "train --attention flex"
  hart train $G --out "$W/gen-flex" --steps $(q 200) --attention flex 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -2
  step "torchrun --nproc_per_node 1 (NCCL)"
  python -m torch.distributed.run --nproc_per_node 1 -m hart.train $G --out "$W/gen-ddp" --steps $(q 200) 2>&1 \
    | tr '\r' '\n' | grep -v '^$' | tail -3
  tail -n 2 "$W/gen/metrics.jsonl" "$W/gen-flex/metrics.jsonl" "$W/gen-ddp/metrics.jsonl"
  step "generate (bundled default model; the trained one in bf16 and compiled)"
  hart generate --all-classes --num 8 --scale 3 --device $DEV --out "$OUT/default_cuda.png"
  hart generate --model "$W/gen" --class 0 --num 16 --device $DEV --dtype bf16 --out "$OUT/gen_bf16.png"
  hart generate --model "$W/gen" --class 0 --num 16 --device $DEV --dtype bf16 --compile --out "$OUT/gen_compiled.png"
  step "fid (effnet) of the trained model against synthetic:test"
  hart fid --model "$W/gen" --num 2000 --ref synthetic:test --features effnet-lite0 --device $DEV --out "$W/fid.json"
  cat "$W/fid.json"
  ;;
sample)
  step "kernels vs references"
  python benchmarks/bench_kernels.py --device cuda 2>&1 | tee "$OUT/bench_kernels.log"
  step "var-d16 sampling, bf16"
  python benchmarks/bench_sampling.py --device cuda --config var-d16 --dtypes bf16 --batches 1 64 --repeats 5 \
    --engines kernels eager compile graph --skip-naive --var-src "$VAR_SRC" 2>&1 | tee "$OUT/bench_sampling.log"
  ;;
train)
  step "var-d16 training step, bf16"
  python benchmarks/bench_train.py --device cuda --configs var-d16 --dtypes bf16 --attention sdpa flex sdpa+compile sdpa+compile-all \
    --var-src "$VAR_SRC" --steps 10 --warmup 3 2>&1 | tee "$OUT/bench_train.log"
  ;;
demo)
  step "the demo under load"
  python benchmarks/bench_demo_load.py --device cuda --clients 20 --images 4 --modes 1 8 2>&1 | tee "$OUT/bench_demo.log"
  ;;
all)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'
  [ -d "$VAR_SRC" ] || echo "note: no VAR checkout at $VAR_SRC: the sampler and training tables run without VAR's columns"
  [ -d "$HART_SRC/hart" ] || echo "note: no HART checkout at $HART_SRC: the 1024 px line runs without HART's sampler"
  V=(); [ -d "$VAR_SRC" ] && V=(--var-src "$VAR_SRC")
  step "CUDA tests: one graph per sampling run, then the others"
  TRITON_INTERPRET=0 timeout -k 10 60 python -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py -k whole_run_graph 2>&1 \
    | tee "$OUT/tests_cuda_graph.log" | tail -8
  TRITON_INTERPRET=0 timeout -k 10 70 python -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py -k "not whole_run_graph" 2>&1 \
    | tee "$OUT/tests_cuda.log" | tail -8
  step "var-d16 sampling, bf16: Triton kernels eager / the whole run as one CUDA graph"
  timeout -k 10 130 python benchmarks/bench_sampling.py --device cuda --config var-d16 --dtypes bf16 --batches 1 64 \
    --repeats 5 --engines kernels graph --skip-naive ${V[@]+"${V[@]}"} 2>&1 | tee "$OUT/bench_sampling.log"
  step "var-d16 training step, bf16"
  timeout -k 10 80 python benchmarks/bench_train.py --device cuda --configs var-d16 --dtypes bf16 --attention sdpa sdpa+compile \
    ${V[@]+"${V[@]}"} --steps 10 --warmup 3 2>&1 | tee "$OUT/bench_train.log"
  step "the demo under load"
  timeout -k 10 60 python benchmarks/bench_demo_load.py --device cuda --clients 20 --images 4 --modes 1 8 2>&1 | tee "$OUT/bench_demo.log"
  step "HART-0.7B at 1024 px, fp16, random weights in the official layout (beside HART's sampler: HART_SRC)"
  H=(); [ -d "$HART_SRC/hart" ] && H=(--hart-src "$HART_SRC")
  timeout -k 10 140 python benchmarks/bench_hart_1024.py --work /tmp/hart-full --device cuda --dtype fp16 --repeats 2 ${H[@]+"${H[@]}"} 2>&1 \
    | tee "$OUT/bench_hart_1024.log"
  ;;
*)
  echo "usage: scripts/gpu_check.sh tests|suite|cli|sample|train|demo|all" >&2
  exit 2
  ;;
esac
