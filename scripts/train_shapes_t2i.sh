#!/usr/bin/env bash
# Train the `shapes` text-to-image model end to end in one command (CPU or GPU):
#   bash scripts/train_shapes_t2i.sh [OUT=runs/shapes] [GENERATOR_STEPS=1200]
# tokenizer (fm-32, 600 steps; then its decoder alone, 2,400 steps, HART's second stage: the
# tokens stay the same) -> token cache of 150k scenes, captions kept as text (at 30k scenes a model
# memorises them: docs/experiments.md, 5.4) -> shapes-t2i generator (each batch's captions encoded
# by MiniLM in the step; --dtype auto: bf16 on a GPU, fp32 on a CPU) -> alignment report.
# Each step resumes from its checkpoint when re-run.
set -euo pipefail
OUT=${1:-runs/shapes}
STEPS=${2:-1200}
HART=${HART:-hart}
resume() { [ -d "$1/train_state" ] && echo --resume || true; }   # continue a run that was stopped
$HART train-tokenizer --preset fm-32 --data shapes --out "$OUT-tok" --steps 600 --batch-size 32 --save-every 100 $(resume "$OUT-tok")
# second stage: encoder and codebook frozen, decoder fine-tuned (no GAN); from the first stage, or resumed
init() { [ -d "$1/train_state" ] && echo --resume || echo --init "$2"; }
$HART train-tokenizer $(init "$OUT-tok2" "$OUT-tok") --freeze-codebook --data shapes --out "$OUT-tok2" --steps 2400 --disc-start 100000 --batch-size 32 --lr 4e-4 --save-every 400
[ -f "$OUT-tokens/tokens.safetensors" ] || $HART extract-tokens --tokenizer "$OUT-tok2" --data shapes --limit 150000 --out "$OUT-tokens"
$HART train --tokenizer "$OUT-tok2" --tokens "$OUT-tokens" --preset shapes-t2i --out "$OUT" --steps "$STEPS" --batch-size 64 --lr 1e-3 --save-every 100 --dtype auto $(resume "$OUT")
$HART eval-alignment --model "$OUT" --data shapes --num 300 --out "$OUT/alignment.json" --grid "$OUT/alignment.png"
