#!/usr/bin/env bash
# The residual head with whole-grid attention (--diff-mix attn), trained on a GPU machine
# (issue 12). Not installed; run from the repository root there:
#
#   OUT=... STEPS=3000 TRAIN_TIMEOUT=400 tools/gpu_head.sh
#   OUT=... EXTRA="--diff-width 1024 --diff-depth 6" tools/gpu_head.sh     # a fresh head of HART's size
#
# Head-only, as session 15's joint head: from the bundled model (frozen transformer), true
# ids, Fashion-MNIST from .ext/fm (the Debian package's train files, carried along), the
# packages the machine lacks from site-train.tar.xz. The run is exported in fp16 as tar parts
# of at most 15 MB under $OUT; measure it here with benchmarks/head_sweep.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" /tmp/site
tar xJf "${SITE_TAR:-.ext/site-train.tar.xz}" -C /tmp/site || exit 1
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
hart() { python -c 'import sys; from hart.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
W=/tmp/head
rm -rf "$W"
[ "${DEVICE:-cuda}" = cpu ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "=== training ($(date +%T))"
timeout "${TRAIN_TIMEOUT:-400}" bash -c "$(declare -f hart); hart train --init sampling/default_model --freeze-transformer \
  --residual-target true --diff-mix ${MIX:-attn} --tokenizer sampling/default_model/tokenizer --data fashion-mnist \
  --data-dir ${DATA_DIR:-.ext/fm} --out $W/gen --steps ${STEPS:-3000} --batch-size ${BATCH:-256} --lr ${LR:-1e-3} \
  --save-every ${SAVE_EVERY:-250} --log-every 50 --dtype bf16 --no-tensorboard --device ${DEVICE:-cuda} ${EXTRA:-}" 2>&1 \
  | tr '\r' '\n' | grep -v '^$' > "$W.log"
tail -3 "$W.log"; tail -1 "$W/gen/metrics.jsonl"
echo "=== export ($(date +%T))"
hart export --model "$W/gen" --out "$W/ship" --storage fp16
cp "$W/gen/metrics.jsonl" "$W.log" "$W/ship/"
tar cf - -C "$W" ship | split -b 15M - "$OUT/head-${MIX:-attn}.tar.part-"
ls -la "$OUT"
