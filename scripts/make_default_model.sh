#!/usr/bin/env bash
# Rebuild the bundled Fashion-MNIST class model (sampling/default_model) from scratch, by the
# sequence of stages it was made with (docs/recipes.md has each step's time, hardware and result):
#
#   bash scripts/make_default_model.sh [OUT]          # OUT defaults to runs/recipe-fm
#   DRY_RUN=1 bash scripts/make_default_model.sh      # print the commands, run nothing
#
# About 5.8 h on a 2-core CPU with avx512_bf16 (bf16 autocast). Stop it at any time and run it
# again: a finished step is skipped (its output is there), a stopped training run continues from
# its last checkpoint with --resume. The result is OUT/model (the folder sampling/default_model
# holds) and OUT/samples.png. Needs Fashion-MNIST (Debian's dataset-fashion-mnist, or --data-dir:
# set DATA_DIR). HART=path/to/hart and PYTHON=path/to/python pick the interpreter's tools.
set -euo pipefail

OUT=${1:-runs/recipe-fm}
HART=${HART:-$(command -v hart || echo .venv/bin/hart)}
PYTHON=${PYTHON:-$(dirname "$HART")/python}
[ -x "$PYTHON" ] || PYTHON=python3
DRY_RUN=${DRY_RUN:-0}
DATA=(--data fashion-mnist)
[ -n "${DATA_DIR:-}" ] && DATA+=(--data-dir "$DATA_DIR")
mkdir -p "$OUT"

. "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"

# 1. tokenizer, first stage: fm-32-h, 5,000 steps (81 min). The shipped tokenizer's first three
# stages trained every output channel (they predate the grayscale output), hence --grayscale off.
if [ "$(saved_step "$OUT/tok-h")" -ge 5000 ]; then skip tok-h "$OUT/tok-h"; else
    start_args "$OUT/tok-h" --preset fm-32-h
    timed tok-h "$HART" train-tokenizer "${START[@]}" "${DATA[@]}" --out "$OUT/tok-h" --steps 5000 --batch-size 32 \
        --lr 3e-4 --disc-start 2500 --save-every 250 --dtype bf16 --grayscale off
fi

# 2. second stage, HART's: decoder only, encoder and codebook frozen (19 min)
if [ "$(saved_step "$OUT/tok-h2")" -ge 1500 ]; then skip tok-h2 "$OUT/tok-h2"; else
    start_args "$OUT/tok-h2" --init "$OUT/tok-h"
    timed tok-h2 "$HART" train-tokenizer "${START[@]}" --freeze-codebook "${DATA[@]}" --out "$OUT/tok-h2" --steps 1500 \
        --batch-size 32 --lr 4e-4 --disc-start 150 --save-every 250 --dtype bf16 --grayscale off
fi

# 3. token cache of the train split (9.5 min)
if [ -f "$OUT/fm-tokens-h/tokens.safetensors" ]; then skip fm-tokens-h "$OUT/fm-tokens-h"; else
    timed fm-tokens-h "$HART" extract-tokens --tokenizer "$OUT/tok-h2" "${DATA[@]}" --out "$OUT/fm-tokens-h"
fi

# 4. generator with its per-token head: fm-s, 4,000 steps of batch 64 (about 161 min)
if [ "$(saved_step "$OUT/gen-h")" -ge 4000 ]; then skip gen-h "$OUT/gen-h"; else
    start_args "$OUT/gen-h"
    timed gen-h "$HART" train "${START[@]}" --tokenizer "$OUT/tok-h2" --tokens "$OUT/fm-tokens-h" --preset fm-s \
        --out "$OUT/gen-h" --steps 4000 --batch-size 64 --lr 1e-3 --save-every 100 --dtype bf16
fi

# 5. third decoder stage: 80% of the batches decode the exact latent, GAN weight 0.3 (24 min);
# encoder and codebook still frozen, so the ids, the cache and the generator stay valid
if [ "$(saved_step "$OUT/tok-h3")" -ge 2000 ]; then skip tok-h3 "$OUT/tok-h3"; else
    start_args "$OUT/tok-h3" --init "$OUT/tok-h2"
    timed tok-h3 "$HART" train-tokenizer "${START[@]}" --freeze-codebook "${DATA[@]}" --out "$OUT/tok-h3" --steps 2000 \
        --batch-size 32 --lr 4e-4 --disc-start 150 --disc-weight 0.3 --hybrid-share 0.8 --save-every 250 \
        --dtype bf16 --grayscale off
fi

# 6. the model as shipped on 2026-11-22: int8, head temperature 0.6, grayscale output (no training)
if exported "$OUT/ship-h3g"; then skip ship-h3g "$OUT/ship-h3g"; else
    timed ship-h3g "$HART" export --model "$OUT/gen-h" --tokenizer "$OUT/tok-h3" --out "$OUT/ship-h3g" --storage int8 \
        --diff-temperature 0.6 --grayscale on --overwrite
fi

# 7. the token cache of that shipped tokenizer (the map head trains on its ids)
if [ -f "$OUT/fm-tokens/tokens.safetensors" ]; then skip fm-tokens "$OUT/fm-tokens"; else
    timed fm-tokens "$HART" extract-tokens --tokenizer "$OUT/ship-h3g/tokenizer" "${DATA[@]}" --out "$OUT/fm-tokens"
fi

# 8. the head replaced: a fresh map head on the frozen transformer, trained on the transformer's
# own last-scale draws (38 min)
if [ "$(saved_step "$OUT/gen-map-own")" -ge 3000 ]; then skip gen-map-own "$OUT/gen-map-own"; else
    start_args "$OUT/gen-map-own" --init "$OUT/ship-h3g"
    timed gen-map-own "$HART" train "${START[@]}" --freeze-transformer --residual-target sampled --diff-mix map \
        --diff-prediction v_prediction --diff-metric decoder --diff-width 96 --diff-depth 6 --diff-batch-mul 2 \
        --tokenizer "$OUT/ship-h3g/tokenizer" --tokens "$OUT/fm-tokens" --out "$OUT/gen-map-own" --steps 3000 \
        --batch-size 64 --lr 5e-4 --save-every 500 --dtype bf16
fi

# 9. LPIPS features trained on the labelled images (8 min)
if [ -f "$OUT/lpips-fm.safetensors" ]; then skip lpips-fm "$OUT/lpips-fm.safetensors"; else
    timed lpips-fm "$PYTHON" scripts/feature_net.py "${DATA[@]}" --out "$OUT/lpips-fm.safetensors"
fi

# 10. fourth decoder stage from the shipped tokenizer: a discriminator on those features, LPIPS on
# them, the sharpness term (6 min); encoder and codebook frozen
if [ "$(saved_step "$OUT/tok-fd03")" -ge 600 ]; then skip tok-fd03 "$OUT/tok-fd03"; else
    start_args "$OUT/tok-fd03" --init "$OUT/ship-h3g/tokenizer"
    timed tok-fd03 "$HART" train-tokenizer "${START[@]}" --freeze-codebook "${DATA[@]}" --out "$OUT/tok-fd03" \
        --steps 600 --batch-size 32 --lr 1e-4 --disc-start 0 --disc-weight 0.3 --disc-input features \
        --lpips-weights "$OUT/lpips-fm.safetensors" --hybrid-share 0.8 --sharpness-weight 1 --save-every 200 --dtype bf16
fi

# 11. the model: the map head's generator and the fourth-stage tokenizer, int8, deterministic head draw
if exported "$OUT/model"; then skip model "$OUT/model"; else
    timed model "$HART" export --model "$OUT/gen-map-own" --tokenizer "$OUT/tok-fd03" --out "$OUT/model" \
        --storage int8 --diff-temperature 0 --grayscale on --overwrite
fi

if [ -f "$OUT/samples.png" ]; then skip samples "$OUT/samples.png"; else
    timed samples "$HART" generate --model "$OUT/model" --all-classes --num 8 --out "$OUT/samples.png" --scale 3
fi
echo "model folder: $OUT/model"
