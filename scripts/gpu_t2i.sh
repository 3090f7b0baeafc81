#!/usr/bin/env bash
# Text-to-image on `shapes`, trained and measured on a GPU machine. Not installed; run
# from the repository root there, with the packages that machine lacks and MiniLM carried along:
#
#   python scripts/minilm_pack.py pack --out .ext/minilm-shapes     # here: MiniLM for the shapes captions, 23 MB
#   scripts/gpu_wheels.sh                                              # here: .whl/, what the machine lacks
#   OUT=... BUDGET=400 scripts/gpu_t2i.sh                           # there: both models at once, one GPU
#
# It trains `shapes-t2i` (9.2M, the bundled size) and `shapes-t2i-l` (34M) side by side on the
# bundled t2i model's tokenizer, scenes rendered on the fly by data workers (every batch new
# scenes: 1M train scenes), sizes the runs from a 30-step probe so that both end within BUDGET
# seconds, then runs `hart eval-alignment` (300 prompts per set) on each and exports them
# (the small one in fp16, the large in int4) as tar parts of at most 15 MB under $OUT.
#
# Across GPU runs (what comes back from one is at most 64 MiB: no optimizer state), a later run
# continues from the exported weights: export the large one in int8 (STORAGE_L=int8, 3 parts),
# put the parts back together here (cat ship-l.tar.part-* | tar xf - -C .ext), carry .ext, and
# start the next run with INIT=.ext/ship-l ONLY=l (hart train --init: weights, not the optimizer).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
SITE=/tmp/site
. scripts/gpu_lib.sh
gpu_site "$SITE" "${SITE_TAR:-.ext/site-train.tar.xz}" || exit 1
export HF_HUB_OFFLINE=1
python scripts/minilm_pack.py unpack --src "${MINILM:-.ext/minilm-shapes}" --site "$SITE" || exit 1
W=/tmp/t2i
rm -rf "$W" && mkdir -p "$W"
TOK=${TOK:-sampling/default_t2i_model/tokenizer}
BUDGET=${BUDGET:-400}
PROBE=${PROBE:-30}  # DEVICE=cpu BATCH=8 PROBE=3 BUDGET=20 NUM=6: a dry run on a CPU
[ "${DEVICE:-cuda}" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'

# name preset batch lr storage (ONLY=l: the large one alone; STEPS=N: N steps, no probe)
RUNS=()
[ "${ONLY:-s}" = s ] && RUNS+=("s shapes-t2i ${BATCH:-256} 1.5e-3 fp16")
[ "${ONLY:-l}" = l ] && RUNS+=("l shapes-t2i-l ${BATCH:-256} 1e-3 ${STORAGE_L:-int4}")
common() { echo "--tokenizer $TOK --data shapes --workers ${WORKERS:-6} --dtype bf16 --no-tensorboard --device ${DEVICE:-cuda}${INIT:+ --init $INIT}"; }

declare -A STEPS
[ -z "${STEPS:-}" ] && step "probe: $PROBE steps of each, side by side"
for r in "${RUNS[@]}"; do
  [ -n "${STEPS:-}" ] && break
  set -- $r
  hart train $(common) --preset "$2" --batch-size "$3" --lr "$4" --out "$W/probe-$1" --steps $PROBE --log-every $((PROBE / 3)) \
    --save-every 1000 > "$W/probe-$1.log" 2>&1 &
done
wait
for r in "${RUNS[@]}"; do
  set -- $r
  [ -n "${STEPS:-}" ] && { STEPS[$1]=$STEPS; continue; }
  ips=$(python -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['throughput/images_per_s'])" \
        "$W/probe-$1/metrics.jsonl") || { tail -5 "$W/probe-$1.log"; exit 1; }
  STEPS[$1]=$(python -c "print(max(int(float('$ips') * $BUDGET / $3) // 100 * 100, 10))")
  echo "$2: $ips images/s side by side -> ${STEPS[$1]} steps of batch $3 in ${BUDGET} s"
done

step "training, side by side"
for r in "${RUNS[@]}"; do
  set -- $r
  timeout "${TRAIN_TIMEOUT:-$((BUDGET + 150))}" bash -c "$(declare -f hart); hart train $(common) --preset $2 --batch-size $3 --lr $4 \
    --out $W/$1 --steps ${STEPS[$1]} --save-every ${SAVE_EVERY:-500} --log-every 100" 2>&1 | tr '\r' '\n' | grep -v '^$' > "$W/train-$1.log" &
done
wait
for r in "${RUNS[@]}"; do set -- $r; echo "--- $2"; tail -3 "$W/train-$1.log"; tail -1 "$W/$1/metrics.jsonl"; done

step "export"
for r in "${RUNS[@]}"; do
  set -- $r
  hart export --model "$W/$1" --out "$W/ship-$1" --storage "$5"
  cp "$W/$1/metrics.jsonl" "$W/ship-$1/metrics.jsonl" 2>/dev/null
  cp "$W/train-$1.log" "$W/ship-$1/" 2>/dev/null
  tar cf - -C "$W" "ship-$1" | split -b 15M - "$OUT/ship-$1.tar.part-"
done

step "alignment, 300 prompts per set"
for r in "${RUNS[@]}"; do
  set -- $r
  hart eval-alignment --model "$W/$1" --data shapes --num ${NUM:-300} --batch-size 100 --device ${DEVICE:-cuda} \
    --out "$W/alignment-$1.json" --grid "$W/alignment-$1.png" > "$W/alignment-$1.log" 2>&1 &
done
wait
for r in "${RUNS[@]}"; do set -- $r; echo "--- $2"; tail -2 "$W/alignment-$1.log"; done

for r in "${RUNS[@]}"; do set -- $r; cp "$W/alignment-$1".* "$OUT/" 2>/dev/null; done
ls -la "$OUT"
